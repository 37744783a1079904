"""One module per CLI command: each takes plain values and returns plain results."""
