"""The app server's protections, against a real `mlflow-transfer ui` subprocess over a real (empty)
sqlite tracking store: framing headers on every response, websocket origins limited to the server's
own host and port (also on a free port, ``--port 0``, and another loopback address), and sessions
destroyed soon after their websocket closes.

Websocket handshakes use tornado's client, as a browser would: ``Origin`` set, Bokeh's subprotocol
carrying the session token of a page just fetched.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from ui.server import FRAMING_HEADERS, own_origins

BIN = Path(sys.executable).parent


class Served:
    """``mlflow-transfer ui --port 0`` in a subprocess; its stderr is read (and drained) by a thread."""

    def __init__(self, tmp: Path, host: str = "127.0.0.1"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BOKEH_"))}
        env.update(MLFLOW_TRANSFER_CACHE=str(tmp / "cache"))
        self.proc = subprocess.Popen([str(BIN / "mlflow-transfer"), "ui", "--host", host, "--port", "0",
                                      "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"],
                                     cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stderr], daemon=True).start()
        found = self.wait_for(r"mlflow-transfer ui: (http://\S+/) over", 120)
        self.url = found.group(1)
        self.origin = self.url.rstrip("/")

    def wait_for(self, pattern: str, seconds: float) -> re.Match:
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the app exited with {self.proc.returncode}") from None
                continue
            if found := re.search(pattern, line):
                return found
        raise TimeoutError(f"no stderr line matching {pattern!r} in {seconds} s")

    def token(self) -> str:
        """The session token of a freshly served page (what its BokehJS sends to open the websocket)."""
        with urllib.request.urlopen(self.url, timeout=60) as r:
            return re.search(r'"token"\s*:\s*"([^"]+)"', r.read().decode()).group(1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("ui-server"))
    yield s
    s.close()


def _handshake(url: str, origin: str, token: str | None = None) -> str:
    """The msgtype of the server's first websocket message, or ``HTTP <code>`` when refused."""
    async def go():
        request = HTTPRequest(url.replace("http://", "ws://") + "ws", headers={"Origin": origin},
                              request_timeout=30)
        try:
            conn = await websocket_connect(request, subprotocols=["bokeh", token] if token else None)
        except HTTPClientError as exc:
            return f"HTTP {exc.code}"
        try:
            header = await asyncio.wait_for(conn.read_message(), 30)  # Bokeh's header frame
            return json.loads(header)["msgtype"]
        finally:
            conn.close()

    return asyncio.run(go())


def _headers(url: str):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, b""


def test_page_static_files_liveness_and_errors_carry_the_framing_headers(served):
    status, headers, body = _headers(served.url)
    assert status == 200
    static = re.search(r'src="(?:\./)?(static/[^"]+\.js[^"]*)"', body.decode()).group(1)
    for url, want in ((served.url, 200), (served.url + static, 200), (served.url + "liveness", 200),
                      (served.url + "no-such-page", 404)):
        status, headers, _ = _headers(url)
        assert status == want, url
        for name, value in FRAMING_HEADERS.items():
            assert headers.get(name) == value, (url, name)


def test_websocket_from_another_site_is_refused(served):
    assert _handshake(served.url, "http://evil.example") == "HTTP 403"
    assert _handshake(served.url, "http://evil.example", served.token()) == "HTTP 403"


def test_websocket_from_the_same_host_on_another_port_or_a_null_origin_is_refused(served):
    other = served.origin.rsplit(":", 1)[0] + ":1"
    assert _handshake(served.url, other, served.token()) == "HTTP 403"
    assert _handshake(served.url, "null", served.token()) == "HTTP 403"  # sandboxed frame, file:// page


def test_websocket_from_the_apps_own_page_is_accepted_on_a_free_port(served):
    port = served.origin.rsplit(":", 1)[1]
    assert port != "0"
    assert _handshake(served.url, served.origin, served.token()) == "ACK"
    assert _handshake(served.url, f"http://localhost:{port}", served.token()) == "ACK"  # the other loopback name


def test_a_session_is_destroyed_seconds_after_its_websocket_closes(served):
    assert _handshake(served.url, served.origin, served.token()) == "ACK"
    # Bokeh's default would take 15–32 s; 60 s leaves room for a busy machine, not for a leak.
    served.wait_for(r"session closed \(0 open\)", 60)


def test_another_bind_address_allows_only_its_own_origin(tmp_path):
    s = Served(tmp_path, host="127.0.0.2")  # another loopback address: no root needed, nothing exposed
    try:
        assert s.url.startswith("http://127.0.0.2:")
        assert _handshake(s.url, s.origin, s.token()) == "ACK"
        assert _handshake(s.url, s.origin.replace("127.0.0.2", "127.0.0.1"), s.token()) == "HTTP 403"
    finally:
        s.close()


def test_a_wildcard_bind_lists_the_machines_names_on_its_port_never_any_origin():
    import socket

    origins = own_origins("0.0.0.0", 8123)
    assert "*" not in "".join(origins)
    assert {"127.0.0.1:8123", "localhost:8123", f"{socket.gethostname().lower()}:8123"} <= set(origins)
    assert all(o.endswith(":8123") for o in origins)
    assert own_origins("::1", 5006) == ["[::1]:5006", "localhost:5006"]
    assert own_origins("localhost", 5006) == ["127.0.0.1:5006", "[::1]:5006", "localhost:5006"]
    assert own_origins("10.1.2.3", 5006) == ["10.1.2.3:5006"]


def test_the_shared_reprojection_cache_is_bounded_in_bytes(tiny_bundle, monkeypatch):
    """Every session of a server shares this cache: many large projections must not pile up."""
    from mlflow_transfer.bundle import PairBundle
    from ui import projection

    b = PairBundle.open(tiny_bundle)
    monkeypatch.setattr(projection, "_CACHE", type(projection._CACHE)())
    first = projection.reprojected(b, ["a", "b"])[1]
    monkeypatch.setattr(projection, "_CACHE_BYTES", first.nbytes)  # room for one projection this size
    assert projection.reprojected(b, ["a", "b"])[1] is first  # still cached
    projection.reprojected(b, ["a", "c"])
    assert len(projection._CACHE) == 1 and all(v is not first for v in projection._CACHE.values())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_a_kill_stops_the_app_without_claiming_runs_marked_failed(tmp_path, sig):
    """The app opens no run: stopping it prints nothing about FAILED runs, and no traceback."""
    app = Served(tmp_path)
    app.proc.send_signal(sig)
    assert app.proc.wait(timeout=30) in (0, 130)
    time.sleep(0.5)  # the reader thread drains the last lines
    said = []
    while not app.lines.empty():
        said.append(app.lines.get())
    assert not [line for line in said if "FAILED" in line or "Traceback" in line], said


def test_the_warm_up_draws_the_app_without_a_tracking_server(caplog, monkeypatch):
    """`warm_up` (run on the server's loop once it listens) draws the app and the plot kinds into a throwaway
    document; it reads nothing from a tracking server (none is reachable here) and fails silently only."""
    import logging

    from ui import server

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with caplog.at_level(logging.DEBUG, logger="ui"):
        server.warm_up()
    assert not [r for r in caplog.records if "warming up failed" in r.getMessage()]
