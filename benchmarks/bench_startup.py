"""Benchmark: the app's start time — ``mlflow-transfer ui --port 0`` on an empty sqlite store, from process
start to ``/liveness`` answering 200.

Goal (issue 10): the app's only door is the bundle reader, so starting it must not import torch, captum,
scikit-learn or scipy (``import mlflow_transfer.bundle`` used to pull them in through the package's
``__init__`` and the bundle writer).

Set-up (self-contained): a temporary folder with an empty ``sqlite:///…/mlflow.db`` (created by the server
on start) as the tracking store; MLflow's run/experiment/tracking variables are dropped from the
environment. Each start is a fresh process (``--repeat`` of them, one at a time); the real port is read
from the line the server prints (``http://127.0.0.1:<port>/``), then ``/liveness`` is polled every 20 ms.
The time is wall clock from just before ``Popen`` to the first 200. Printed: each start and the median.
Numbers on a machine shared with other processes swing.

Usage: ``python benchmarks/bench_startup.py [--repeat 3]``; to measure an older commit with this script,
unpack it (``git archive <commit> mlflow_transfer ui | tar -x -C /tmp/old``) and run with
``PYTHONPATH=/tmp/old``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
URL_LINE = re.compile(r"http://[^\s/]+:(\d+)/")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    return env


def _port_from(proc: subprocess.Popen, deadline: float) -> int:
    """The port in the server's "http://host:port/" line on stderr."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen = []
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.05):
            if proc.poll() is not None:
                break
            continue
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if m := URL_LINE.search(line):
            return int(m.group(1))
    raise RuntimeError(f"the server printed no URL (exit {proc.poll()}): {''.join(seen)[-2000:]}")


def start_once(store: Path, timeout: float = 180) -> float:
    """Seconds from process start to ``/liveness`` answering 200, for one fresh ``mlflow-transfer ui``."""
    args = [str(BIN / "mlflow-transfer"), "ui", "--port", "0", "--tracking-uri", f"sqlite:///{store}/mlflow.db"]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=store, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = t0 + timeout
        port = _port_from(proc, deadline)
        url = f"http://127.0.0.1:{port}/liveness"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"{url} did not answer in {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh starts to measure (default 3)")
    args = parser.parse_args(argv)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"$ python benchmarks/bench_startup.py --repeat {args.repeat}")
    print(f"{now} · {platform.node()} · {os.cpu_count()} CPUs ({platform.machine()}) · "
          f"load average {os.getloadavg()[0]:.2f} at start · commit {_commit()}")
    if os.environ.get("PYTHONPATH"):  # e.g. an older tree unpacked with git archive, to measure it
        print(f"code measured: PYTHONPATH={os.environ['PYTHONPATH']} (not the commit above)")
    print("command: mlflow-transfer ui --port 0 --tracking-uri sqlite:///<empty tmp>/mlflow.db;"
          " process start -> /liveness 200")
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        store = Path(tmp)
        for i in range(args.repeat):
            times.append(start_once(store))
            print(f"  start {i + 1}: {times[-1]:.2f} s", flush=True)
    print(f"median of {len(times)}: {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()
