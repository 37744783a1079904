"""`python -m soa_git`: the console script, for environments without it on PATH."""

from soa_git.entry import main

main()
