"""The `mlflow-transfer` command for the tests: run in this process, or as the installed command, and the
one check every bad input on the command line must pass.

``invoke`` runs the click entry point here (the same commands, error handling, exit status and stderr),
without the five-odd seconds of interpreter start and imports that a subprocess costs on two shared
cores; ``run_command`` starts the installed command, for what only a real process shows (a signal, a
child that outlives its parent, the console script itself).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

from helpers import REPO
from helpers.servers import BIN


@dataclass(frozen=True)
class Finished:
    """What a command left: its exit status and what it printed (as ``subprocess.CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str) -> Finished:
    """``mlflow-transfer *args`` in this process, against the tracking store MLflow points at. The
    command's SIGTERM handler and the variables it sets are undone afterwards (its malloc tuning,
    ``keep_freed_memory``, stays: it only keeps freed memory for reuse). An exception the command does not
    turn into an exit status is raised here, with its traceback."""
    from click.testing import CliRunner

    from mlflow_transfer.cli import main

    handler, environ = signal.getsignal(signal.SIGTERM), dict(os.environ)
    try:
        result = CliRunner().invoke(main, list(args), prog_name="mlflow-transfer")
    finally:
        signal.signal(signal.SIGTERM, handler)
        os.environ.clear()
        os.environ.update(environ)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Finished(result.exit_code, result.stdout, result.stderr)


def run_command(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed ``mlflow-transfer *args`` as a subprocess in the repository, with ``env``."""
    return subprocess.run([str(BIN / "mlflow-transfer"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_error_line(proc, *fragments: str) -> str:
    """The command failed as a user error should: exit status 2 and exactly one `mlflow-transfer: error:`
    line, holding every fragment, with no traceback. Returns that line."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mlflow-transfer: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    return errors[0]
