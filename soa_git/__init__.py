"""soa-git: Self-Organized Agents that keep their work as git history."""

__version__ = "0.1.0"
