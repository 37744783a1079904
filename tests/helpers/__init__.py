"""What tests share, in one place (pre-commit's `testing/` is the model): `repos` builds real git
repositories and reads them back; `shapes` is the scripted scenario most end-to-end tests run;
`targets` the many-targets one; `cli` what command-line tests check; `github` a loopback
stand-in for GitHub's REST API; `processes` the process table.
Test modules import from here, never from one another; fixtures stay in conftest.py.
"""
