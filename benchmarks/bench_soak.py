"""Benchmark: the app server's memory under a soak of page loads, and after the browsers go away.

Goal (issue 9): RSS after idle ≤ 1.10 × RSS after the first 20 page loads (the server gives back what
the sessions of closed tabs held).

Set-up (self-contained): a sqlite tracking store with one tiny diagnosed pair, made once by the real
pipeline (``mlflow-transfer main`` with a tiny recipe, ≈ 1–2 min on 2 cores) in ``--store`` and reused
by later runs. The app is served by ``mlflow-transfer ui`` (a subprocess, 127.0.0.1, a free port) over
that store; its RSS is read from ``/proc/<pid>/status``.

Client: Debian's Chromium via Playwright, ``--parallel`` pages at a time in one browser, each page
loaded until the app shows the pair ("Transferability score"), then closed. A real browser rather than a
lighter client that only completes the Bokeh websocket handshake: what a page load costs the server
includes what the browser sends back once it has rendered (the document-ready event that runs
Panel's onload callbacks, the Location sync of the address bar, layout round trips), and a closed tab
is exactly what the server must clean up after. The loop is bounded: ``--loads`` page loads at most,
each given ``--page-timeout`` seconds, all of them ``--max-seconds``; then ``--idle`` seconds with no
client, sampling RSS, so that the server destroys the unused sessions.

Printed: RSS after the server answered, after load 1, 20, 50, 100, every 100 after that, during idle,
and the ratio RSS after idle / RSS after the first 20 loads.

Usage: ``python benchmarks/bench_soak.py [--loads 500] [--parallel 3] [--idle 90]``
(≈ 8 min for 500 loads on 2 cores, plus the store the first time).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' server helpers
from helpers.servers import BIN, free_port, stop, wait_until_up  # noqa: E402
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TINY = ("data.source.size=100,data.per_class_cap=12,source.epochs=1,target.epochs=1,"
        "source.batch_size=32,target.batch_size=32")
READY = "Transferability score"  # shown once the app has opened the pair


def _env(store: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", MLFLOW_TRANSFER_CACHE=str(store / "cache"))
    return env


def make_store(store: Path) -> str:
    """A sqlite store with one diagnosed pair, made by the real pipeline unless already there."""
    uri = f"sqlite:///{store}/mlflow.db"
    done = store / "ready"
    if not done.exists():
        store.mkdir(parents=True, exist_ok=True)
        t = time.time()
        proc = subprocess.run([str(BIN / "mlflow-transfer"), "main", "--recipe", str(REPO / "recipes" / "digits.yaml"),
                               "--set", TINY, "--tracking-uri", uri,
                               "--experiment-name", "soak", "--n-steps", "2", "--sample-per-class", "2"],
                              cwd=store, env=_env(store), capture_output=True, text=True, timeout=1200)
        if proc.returncode:
            raise RuntimeError(f"making the store failed:\n{proc.stderr[-3000:]}")
        done.write_text("ok\n")
        print(f"built the store (one tiny diagnosed pair) in {time.time() - t:.0f} s")
    return uri


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def soak(url: str, pid: int, args, marks: set[int]) -> tuple[list[tuple[str, float, float]], int, int]:
    """``args.loads`` page loads, ``args.parallel`` at a time; RSS after each load count in ``marks``."""
    from playwright.async_api import async_playwright

    curve: list[tuple[str, float, float]] = []
    done = failed = 0
    start = time.time()
    deadline = start + args.max_seconds
    queue = iter(range(args.loads))

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})

        async def worker():
            nonlocal done, failed
            for _ in queue:
                if time.time() > deadline:
                    return
                page = await context.new_page()
                try:
                    await page.goto(url, timeout=args.page_timeout * 1000)
                    await page.get_by_text(READY).wait_for(timeout=args.page_timeout * 1000)
                except Exception as exc:  # noqa: BLE001 - counted and printed, the soak goes on
                    failed += 1
                    print(f"  load {done + 1}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                finally:
                    await page.close()  # the tab goes away: its websocket closes
                done += 1
                if done in marks:
                    curve.append((f"after load {done}", rss_mb(pid), time.time() - start))

        await asyncio.gather(*[worker() for _ in range(args.parallel)])
        await context.close()
        await browser.close()
    return curve, done, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", type=int, default=500, help="page loads (upper bound)")
    ap.add_argument("--parallel", type=int, default=3, help="pages open at a time")
    ap.add_argument("--idle", type=float, default=90, help="seconds without a client at the end")
    ap.add_argument("--page-timeout", type=float, default=60, help="seconds for one page load")
    ap.add_argument("--max-seconds", type=float, default=1800, help="bound on the whole load loop")
    ap.add_argument("--store", type=Path, default=REPO / "test-output" / "soak-store",
                    help="tracking store folder (made once, reused)")
    args = ap.parse_args()

    print("$ python benchmarks/bench_soak.py " + " ".join(sys.argv[1:]))
    print(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC · {platform.node()} · "
          f"{os.cpu_count()} CPUs ({platform.machine()}) · load average {os.getloadavg()[0]:.2f} at start")
    uri = make_store(args.store)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server_log = args.store / "server.log"  # the server's stderr: one line per session opened / closed
    with server_log.open("w") as log:
        server = subprocess.Popen([str(BIN / "mlflow-transfer"), "ui", "--port", str(port), "--tracking-uri", uri],
                                  cwd=args.store, env=_env(args.store), stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until_up(url + "liveness", server)
        pid = server.pid
        curve = [("server up, no session", rss_mb(pid), 0.0)]
        marks = {1, 20, 50, 100, *range(200, args.loads + 1, 100), args.loads}
        t0, cpu0 = time.time(), cpu_s(pid)
        loads, n, failed = asyncio.run(soak(url, pid, args, marks))
        curve += loads
        busy, cpu = time.time() - t0, cpu_s(pid) - cpu0
        print(f"{n} page loads ({failed} failed), {args.parallel} at a time, in {busy:.0f} s "
              f"({busy / max(n, 1):.2f} s per load); server CPU {cpu:.0f} s ({cpu / max(n, 1):.2f} s per load)")
        idle_start = time.time()
        step = 15
        while (waited := time.time() - idle_start) < args.idle:
            time.sleep(min(step, args.idle - waited))
            curve.append((f"idle {time.time() - idle_start:.0f} s", rss_mb(pid), time.time() - t0))
        text = server_log.read_text()
        print(f"server log: {text.count('session opened')} sessions built, {text.count('session closed')} "
              f"destroyed (a build per page load, plus one per page whose websocket came after its session "
              f"was dropped; the server before issue 9 logged neither)")
        print("\n  RSS of the app server (MB)")
        for label, mb, t in curve:
            print(f"  {label:<24} {mb:8.0f}   (t = {t:5.0f} s)")
        after20 = next((mb for label, mb, _ in curve if label == "after load 20"), None)
        if after20:
            ratio = curve[-1][1] / after20
            print(f"\n  RSS after idle / RSS after the first 20 loads = {curve[-1][1]:.0f} / {after20:.0f} = "
                  f"{ratio:.2f}  (goal ≤ 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        stop(server)


if __name__ == "__main__":
    main()
