"""The console script's first code: Ctrl-C at any moment from here on, start-up included, ends
soa-git with one line and exit code 130, never a traceback. (What Python runs before, its own
start-up and pip's script, is its own: docs/commands.md says what a Ctrl-C shows there, and why
a script pip installs cannot narrow that window.)

The handler is installed before the rest of soa-git is imported. It ends the process at once
(`os._exit`): a run's agents work in threads that a KeyboardInterrupt would only reach after
their model call or test run, and what a run leaves when it stops anywhere is what `resume`
is built for (its branches hold every committed step; its lock's holder is gone).
"""

# Nothing but these two before the handler is installed: not even `from __future__ import ...`,
# which imports a module too.
import os
import signal

INTERRUPTED = 130
# Runs this process works on, with whether their root agent has finished: the line names them.
runs: dict[str, bool] = {}


def interrupted(signum: int = signal.SIGINT, frame: object = None) -> None:
    unfinished = [run for run, done in runs.items() if not done]
    hint = "".join(f"; `soa-git resume {run}` continues run {run}" for run in unfinished)
    os.write(2, f"interrupted{hint}\n".encode())
    os._exit(INTERRUPTED)


def install() -> None:
    signal.signal(signal.SIGINT, interrupted)


def main() -> None:
    install()
    from . import faults

    faults.reached("startup")
    from .cli import main as cli

    cli()
