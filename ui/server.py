"""Serving the app (``mlflow-transfer ui``): one Panel/Bokeh server over a `PairSource`, hardened.

* Framing: every HTTP response (page, static files, ``/liveness``, websocket handshakes) carries
  ``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'``, added by a tornado
  output transform (Panel and Bokeh have no option for response headers). No script policy: BokehJS
  needs inline scripts. Tornado compresses nothing unless told to, and Bokeh does not tell it, so this
  transform list (which replaces tornado's default) loses no gzip.
* Websocket origins: only pages served by this server itself may open its websocket, i.e. the bound
  host and port (``127.0.0.1`` and ``localhost``, which browsers treat as different origins, for a
  loopback bind; the machine's names for a wildcard bind). A free port (``--port 0``) is known only
  once Bokeh's `Server` has bound its socket, which happens inside its constructor; the allowlist is
  the live set behind the public ``BokehTornado.websocket_origins`` property, so it is rewritten right
  after binding, before the IO loop runs, hence before any connection. ``BOKEH_ALLOW_WS_ORIGIN``
  still replaces it, for a reverse proxy on another host name.
* Memory: sessions whose browser went away are destroyed after `UNUSED_SESSION_LIFETIME_MS` (Bokeh's
  default: 15 s, checked every 17 s), each drops what it wired to the shared state, and freed memory is
  handed back to the operating system (see `_release_memory`).

``panel serve ui/app.py`` serves the same app without any of this (no headers, Bokeh's default
origin list, default session lifetimes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable
from functools import partial

from tornado.web import OutputTransform

from mlflow_transfer.errors import RunLookupError, TrackingUnavailableError

from .readers import PairSource

__all__ = ["FRAMING_HEADERS", "FramingHeaders", "make_server", "own_origins", "serve", "start_params"]

FRAMING_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}
# A closed tab's session is destroyed 5–7 s later. Bokeh counts a session as unused while no websocket
# is connected, which includes the time between the page request (which builds the session) and the
# page's websocket, a second or two on a busy machine; a page that connects later still works (Bokeh
# builds the session again from its token), at the cost of a second build.
UNUSED_SESSION_LIFETIME_MS = 5_000
CHECK_UNUSED_SESSIONS_MS = 2_000
# A full collection is slow (the app's libraries hold hundreds of thousands of objects; the figure is in
# benchmarks/results_notes.txt): one for the sessions destroyed in a burst, and at most one per interval
# while sessions keep closing.
_RELEASE_DELAY_S = 2.0
_RELEASE_INTERVAL_S = 30.0
_WILDCARD_BINDS = ("", "0.0.0.0", "::")
_LOOPBACK = {"127.0.0.1": {"127.0.0.1", "localhost"}, "::1": {"::1", "localhost"},
             "localhost": {"localhost", "127.0.0.1", "::1"}}  # bind address → names a browser reaches it by
log = logging.getLogger(__name__)


class FramingHeaders(OutputTransform):
    """Adds `FRAMING_HEADERS` to every response: no other site may show the app in a frame."""

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        headers["X-Frame-Options"] = FRAMING_HEADERS["X-Frame-Options"]
        policy = headers.get("Content-Security-Policy", "")
        if "frame-ancestors" not in policy:  # keep a policy a handler set, add the framing rule to it
            headers["Content-Security-Policy"] = "; ".join(filter(None, (policy, "frame-ancestors 'none'")))
        return status_code, headers, chunk


def _origin_host(name: str) -> str:
    """``name`` as it appears in an Origin header: IPv6 addresses in brackets."""
    try:
        return f"[{name}]" if ipaddress.ip_address(name).version == 6 else name
    except ValueError:
        return name.lower()


def own_origins(host: str, port: int) -> list[str]:
    """The ``host:port`` origins of pages this server serves when bound to ``host`` and ``port``.

    A loopback bind is reached as 127.0.0.1 / ::1 or localhost; a wildcard bind (0.0.0.0, ::, '') by
    any of the machine's names and addresses, so those are listed; any other address or name is
    reached as itself.
    """
    if host in _WILDCARD_BINDS:
        fqdn, name = socket.getfqdn(), socket.gethostname()
        names = {"localhost", "127.0.0.1", "::1", name, fqdn}
        for each in (name, fqdn):
            try:
                names.update(info[4][0] for info in socket.getaddrinfo(each, None))
            except OSError:  # a name that does not resolve is still a name a browser may use
                pass
    elif host in _LOOPBACK:
        names = _LOOPBACK[host]
    else:
        names = {host}
    return sorted(f"{_origin_host(n)}:{port}" for n in names if n)


def _release_memory() -> None:
    """Collect the destroyed sessions' cycles now and hand freed heap pages back to the OS.

    The CLI keeps freed memory in glibc's heap for training speed (`mlflow_transfer.runtime`); a
    long-running server must not, or every burst of sessions is kept for good. glibc only.
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc has both; musl lacks malloc_trim
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


_LIBC = _glibc()


def _return_freed_memory() -> None:
    """Undo `keep_freed_memory` for this process: glibc's own thresholds (128 KiB) for trimming the
    heap and for serving large blocks by mmap, which go back to the OS as soon as they are freed."""
    if _LIBC is not None:
        _LIBC.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        _LIBC.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


class _Sessions:
    """Builds the app for each new session and undoes its wiring when the session is destroyed."""

    def __init__(self, source: PairSource, params: dict):
        self.source, self.params = source, params
        self._release_pending = False
        self._released_at = 0.0
        self.live = 0  # sessions built and not yet destroyed (tests and benchmarks read it)

    def open(self):
        import panel as pn

        from .app import build_app

        app = build_app(self.source, **self.params)
        self.live += 1
        log.info("session opened (%d open)", self.live)
        location = pn.state.location

        def forget(session_context):  # Bokeh checks for exactly this signature; Panel may pass None
            self._forget(app, location)

        pn.state.on_session_destroyed(forget)
        return app

    def _forget(self, app, location) -> None:
        """Drop the session's URL sync and every watcher on its state: the session's views then hang
        off nothing but the discarded document, so the next collection frees them, even if something
        long-lived still holds the state."""
        self.live -= 1
        log.info("session closed (%d open)", self.live)
        state = getattr(app, "state", None)
        if state is not None:
            if location is not None:
                try:
                    location.unsync(state)
                except ValueError:  # never synced (no Location in this session)
                    pass
            for per_param in list(state.param.watchers.values()):
                for watchers in list(per_param.values()):
                    for w in list(watchers):
                        state.param.unwatch(w)
            app.state = None
        self._schedule_release()

    def _schedule_release(self) -> None:
        if self._release_pending:
            return
        from tornado.ioloop import IOLoop

        self._release_pending = True

        def release():
            self._release_pending = False
            self._released_at = time.monotonic()
            _release_memory()

        wait = max(_RELEASE_DELAY_S, self._released_at + _RELEASE_INTERVAL_S - time.monotonic())
        IOLoop.current().call_later(wait, release)


def start_params(source: PairSource, experiment_name: str = "", pair: str = "",
                 warn: Callable[[str], None] | None = None) -> dict:
    """What every new session opens: the named experiment's id and the pair.

    Raises:
        RunLookupError: the server is reachable and has no experiment named ``experiment_name``.
    """
    try:
        experiments = {e["name"]: e["experiment_id"] for e in source.experiments()}
    except TrackingUnavailableError as exc:  # the app shows the same message and retries on reload
        if warn:
            warn(f"mlflow-transfer: warning: {exc}")
        experiments = {}
    if experiment_name and experiments and experiment_name not in experiments:
        raise RunLookupError(f"experiment {experiment_name!r} does not exist on {source.uri}; it has "
                             f"{sorted(experiments)[:20]}")
    return {k: v for k, v in (("experiment", experiments.get(experiment_name, "")), ("pair", pair)) if v}


def make_server(source: PairSource, *, host: str = "127.0.0.1", port: int = 5006, params: dict | None = None,
                unused_session_lifetime_ms: int = UNUSED_SESSION_LIFETIME_MS,
                check_unused_sessions_ms: int = CHECK_UNUSED_SESSIONS_MS):
    """A bound, not yet started Bokeh `Server` of the app over ``source`` (``server.port`` is the real
    port, also for ``port=0``). Start it with ``server.start(); server.io_loop.start()``."""
    import panel as pn

    _return_freed_memory()
    sessions = _Sessions(source, params or {})
    # A bound method: Panel calls functions and methods per session, other objects it serves as they are.
    server = pn.serve(sessions.open, address=host, port=port, show=False, start=False, verbose=False, liveness=True,
                      title="mlflow-transfer", transforms=[FramingHeaders],
                      unused_session_lifetime_milliseconds=unused_session_lifetime_ms,
                      check_unused_sessions_milliseconds=check_unused_sessions_ms)
    # Bound now, not serving yet: the allowlist follows the real port (Bokeh's default would be
    # localhost:<port> only, which a page opened as 127.0.0.1 fails).
    allowed = server._tornado.websocket_origins
    allowed.clear()
    allowed.update(own_origins(host, server.port))
    server.sessions = sessions
    return server


def serve(tracking_uri: str | None = None, *, host: str = "127.0.0.1", port: int = 5006, experiment_name: str = "",
          pair: str = "", say: Callable[[str], None] = partial(print, file=sys.stderr)) -> None:
    """Serve the app over ``tracking_uri`` until interrupted (what ``mlflow-transfer ui`` runs)."""
    from .readers import default_source

    if not log.handlers:  # one line per session opened and closed: what an operator watching memory needs
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("mlflow-transfer ui: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    source = default_source(tracking_uri)
    server = make_server(source, host=host, port=port, params=start_params(source, experiment_name, pair, say))
    shown = _origin_host(host) if host not in _WILDCARD_BINDS else host or "0.0.0.0"
    say(f"mlflow-transfer ui: http://{shown}:{server.port}/ over {source.uri} (Ctrl-C stops it)")
    server.start()  # Bokeh's periodic jobs: destroying unused sessions, websocket keep-alive pings
    server.io_loop.add_callback(warm_up)
    server.io_loop.start()


def warm_up() -> None:
    """Import and draw once, into a throwaway document, what a session's first drawing needs (the app's
    modules, HoloViews' Bokeh plotting, a Tabulator): run on the server's loop once it listens, so the first
    visitor does not pay for it. Nothing is read from the tracking server."""
    import holoviews as hv
    import pandas as pd
    import panel as pn
    from bokeh.document import Document

    from .app import build_app
    from .readers import MemorySource

    try:
        doc = Document()
        build_app(MemorySource(), sync_url=False).get_root(doc)
        pn.Column(pn.pane.HoloViews(hv.Scatter([(0, 0)]) * hv.Curve([(0, 0)]) * hv.HeatMap([(0, 0, 0)])),
                  pn.widgets.Tabulator(pd.DataFrame({"a": [0]}))).get_root(doc)
    except Exception:  # noqa: BLE001 -- a warm-up only: the first session then pays, as it would have
        log.debug("warming up failed", exc_info=True)
