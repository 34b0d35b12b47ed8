"""Real servers for the tests and benchmarks: an `mlflow server` and `mlflow-transfer ui` as subprocesses
on 127.0.0.1 free ports, started and stopped by context managers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Poll ``url`` until it answers 200; fail early when ``proc`` exits first."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:2]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the MLflow run/experiment/tracking variables a test run may carry (they
    would redirect the subprocesses) or a user's pickle opt-in, the venv's bin first on PATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI",
                        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION")}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    env.update(extra)
    return env


def stop(proc: subprocess.Popen, *, group: bool = False) -> None:
    """End ``proc`` unless it has ended already (a test may have killed it): SIGTERM, or SIGKILL to its
    whole process group when ``group`` (a server started in a session of its own, its workers too);
    SIGKILL if it has not exited within 30 s."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _serving(args: list[str], url: str, probe: str, cwd: Path, env: dict[str, str], **popen):
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        wait_until_up(url + probe, proc)
        yield proc
    finally:
        stop(proc, group=bool(popen.get("start_new_session")))


@contextlib.contextmanager
def mlflow_server(root: Path, env: dict[str, str] | None = None, workers: int = 1, **popen):
    """``(uri, process)`` of an `mlflow server` over ``root/mlflow.db`` (artifacts under ``root``), with
    ``workers`` worker processes (MLflow's own default is 4)."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    args = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--host",
            "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with _serving(args, uri, "/health", root, env or clean_env(), **popen) as proc:
        yield uri, proc


@contextlib.contextmanager
def transfer_ui(tracking_uri: str, cwd: Path, env: dict[str, str] | None = None):
    """``(url, process)`` of `mlflow-transfer ui` over ``tracking_uri``; ``url`` ends with '/'."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    args = [str(BIN / "mlflow-transfer"), "ui", "--port", str(port), "--tracking-uri", tracking_uri]
    with _serving(args, url, "liveness", cwd, env or clean_env()) as proc:
        yield url, proc


@contextlib.contextmanager
def memory_ui(spec: dict, env: dict[str, str] | None = None):
    """``url`` (ending with '/') of the app's real server over a `MemorySource` of bundle folders
    (``helpers/memory_app.py``; ``spec`` as described there)."""
    import json

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    script = Path(__file__).with_name("memory_app.py")
    args = [str(BIN / "python"), str(script), "--port", str(port), "--spec", json.dumps(spec, default=str)]
    with _serving(args, url, "liveness", script.parents[2], env or clean_env()):
        yield url
