"""Benchmarks of soa-git against published results (scripts, not part of the soa_git package)."""
