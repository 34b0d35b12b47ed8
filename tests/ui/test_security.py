"""The app under hostile input: names that hold HTML or Markdown, URL parameters of any shape, bundle
files that turn out unreadable.

Browser-free tests render the real views over a real bundle whose class names, experiment name and
tags are payloads, then parse the HTML each pane sends to the browser. The browser tests (``slow``)
serve the same pair from a real `mlflow server` with `mlflow-transfer ui`, open every view and every
URL parameter with a payload in Debian's Chromium, and fail on any dialog or any element carrying an
event handler or a ``javascript:`` link; `report.html` is checked the same way.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import numpy as np
import panel as pn
import pytest
from helpers.browser import HOSTILE_ELEMENTS, PAGE_TEXT, needs_chromium
from helpers.bundles import write_tiny_bundle
from helpers.servers import clean_env, mlflow_server, transfer_ui

from helpers.views import drawn

from mlflow_transfer.bundle import PairBundle
from ui.app import TABS, build_app
from ui.readers import MemorySource, TrackingSource
from ui.state import URL_PARAMS, AppState
from ui.views import network as nv
from ui.views.text import escape_md, md_code, message_md

HTML_NAME = "<img src=x onerror=alert(1)>"
MD_NAME = "[x](javascript:alert(2))"
ATTR_NAME = "q\"'><svg onload=alert(3)>"  # a class only in the source domain (no similarity, no features)
CLASSES = (HTML_NAME, MD_NAME, ATTR_NAME)
EXPERIMENT = f"exp {HTML_NAME} {MD_NAME}"
REFLECTED = "<img src=x onerror=alert(document.domain)>"


# --------------------------------------------------------------------------------------------------
# Fixtures: a real bundle with hostile names, the same as an in-memory source


@pytest.fixture(scope="module")
def hostile_bundle(tmp_path_factory):
    """A real pair bundle (two tiny untrained alexnet-32 models, 48 instances) whose class names and
    manifest fields are payloads; the third class has no target-domain instances. With the planted
    robustness records, whose class indices name those classes."""
    history = {("source", "target_val"): ([0, 1], [0.2, 0.4]), ("target", "target_val"): ([0, 1], [0.5, 0.9])}
    root = write_tiny_bundle(tmp_path_factory.mktemp("hostile") / "diagnostics", CLASSES, history=history, meta={
        "runs": {"source": HTML_NAME, "target": MD_NAME, "diagnostics": "d1"}, "recipe": HTML_NAME,
        "pair_id": MD_NAME, "model": HTML_NAME, "domains": {"source": ATTR_NAME, "target": MD_NAME},
        "scores": {"transferability_score": 0.4}}, robustness=True)  # issue 13: the Robustness tab's views too
    return root


def _row(run_id: str, **extra) -> dict:
    """A pair row as `list_diagnosed_pairs` makes it, its tags payloads."""
    return {"diagnostics_run_id": run_id, "recipe": HTML_NAME, "model": MD_NAME, "source_domain": ATTR_NAME,
            "target_domain": HTML_NAME, "start_time": 1_700_000_000_000, "transferability_score": 0.4,
            "target_accuracy": 0.9, "frozen_layers": HTML_NAME, "pair_id": MD_NAME, **extra}


@pytest.fixture()
def source(hostile_bundle):
    return MemorySource({"1": EXPERIMENT, "2": MD_NAME}, {"1": [_row("d1"), _row("d2")]},
                        {"d1": hostile_bundle, "d2": hostile_bundle})


class _Tags(HTMLParser):
    """Every element and attribute of an HTML fragment, as the browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def _dangerous(fragment: str) -> list[str]:
    """Elements of ``fragment`` that would run script: event-handler attributes, ``javascript:``
    links, ``<script>``, ``<svg>`` and ``<img src=x>`` (the payloads' own tags)."""
    parser = _Tags()
    parser.feed(fragment)
    bad = []
    for tag, attrs in parser.found:
        bad += [f"<{tag} {a}>" for a in attrs if a.startswith("on")]
        if any(v.strip().lower().startswith("javascript:") for v in attrs.values()):
            bad.append(f"<{tag}> javascript: link")
        if tag in ("script", "svg") or (tag == "img" and attrs.get("src") == "x"):
            bad.append(f"<{tag}>")
    return bad


def _sent_html(viewable) -> list[str]:
    """The HTML each HTML-like pane of ``viewable`` makes the browser parse (Panel sends it escaped
    once: the browser unescapes it and assigns it as innerHTML). Bokeh titles and glyph text are
    drawn on a canvas, not parsed."""
    root = viewable.get_root()
    out = []
    for model in root.references():  # Panel's HTML model (HTML, Markdown, Alert, PNG panes), Bokeh's Div
        text = getattr(model, "text", None)
        if type(model).__name__ in ("HTML", "Div") and isinstance(text, str) and text:
            out.append(html.unescape(text) if type(model).__name__ == "HTML" else text)
    return out


def _labels(viewable) -> list[str]:
    """Option labels of every MultiChoice: Choices.js writes them with innerHTML."""
    out = []
    for model in viewable.get_root().references():
        if type(model).__name__ == "MultiChoice":
            out += [o if isinstance(o, str) else o[1] for o in model.options]
    return out


def _alerts(viewable) -> list:
    """The error boxes (`Alert` panes) of ``viewable`` once rendered, bound parts evaluated."""
    return [m for m in viewable.get_root().references() if "alert" in (getattr(m, "css_classes", None) or [])]


def _render_all_tabs(state) -> list:
    """Each tab of the app over ``state``, drawn as when shown (its parts' guards included)."""
    return [drawn(tab(state=state)) for tab in TABS]


# --------------------------------------------------------------------------------------------------
# Escaping helpers


def test_escape_helpers_turn_markup_into_text():
    """What Panel's Markdown renderer makes of the escaped payloads: text, no tag, no link."""
    def rendered(md: str) -> str:
        pane = pn.pane.Markdown(md)
        return html.unescape(pane._transform_object(pane.object)["object"])

    for payload in (HTML_NAME, MD_NAME, ATTR_NAME, "x\n\n<script>alert(4)</script>", "- list", "1. item",
                    "`code` <b>", "$x$ &amp; ![i](x)"):
        for md in (escape_md(payload), md_code(payload), message_md(f"got {payload!r}; run `x {payload}`")):
            out = rendered(md)
            assert not _dangerous(out) and "<a" not in out and "<li" not in out and "<b>" not in out, (payload, out)
    assert html.escape(HTML_NAME) in rendered(escape_md(HTML_NAME))  # shown, not dropped
    assert rendered(message_md("run `mlflow ui` now")) == "<p>run <code>mlflow ui</code> now</p>\n"


# --------------------------------------------------------------------------------------------------
# Stored XSS: names from the bundle, the tags and the server


def test_hostile_names_reach_no_pane_as_markup(source, hostile_bundle):
    """Class, experiment, recipe, domain, model and layer names with HTML or Markdown in them are shown
    as text in every view: no pane sends an element with an event handler, a ``javascript:`` link or
    the payload's own tag, and the class chooser's labels are escaped."""
    bundle = PairBundle.open(hostile_bundle)
    layer = bundle.layers[0]
    important = bundle.important_neurons()
    first = next(int(n) for m, c, lay, n in zip(important["model"], important["class_index"], important["layer"],
                                                 important["neuron"]) if m == "target" and c == 0 and lay == layer)
    sent = []
    for classes, neuron in (([HTML_NAME], f"target:{layer}:{first}"), ([ATTR_NAME], REFLECTED), ([], "")):
        app = build_app(source, sync_url=False, classes=classes, neuron=neuron)
        sent += _sent_html(app)
        for tab in _render_all_tabs(app.state):
            sent += _sent_html(tab)
            for label in _labels(tab):
                assert "<" not in label, label
    bad = {fragment: _dangerous(fragment) for fragment in sent if _dangerous(fragment)}
    assert not bad
    shown = " ".join(sent)
    assert html.escape(HTML_NAME) in shown  # the names are there, as text
    # a layer name with quotes in a patch's alt text (Panel writes it with Python's repr quoting)
    patches = {"source": [{"image": np.zeros((4, 4, 3), np.uint8), "value": 1.0, "index": 0}], "target": []}
    row = nv.patch_row(patches, "x\" ' onerror=alert(5) \"", 16)
    assert not [b for fragment in _sent_html(row) for b in _dangerous(fragment)]
    row = nv.patch_row(patches, "x\" ' onerror=alert(5) \"", 16, np.zeros((4, 4, 3), np.uint8))  # + feature vis
    assert not [b for fragment in _sent_html(row) for b in _dangerous(fragment)]
    hit = {"kind": "weight", "model": "target", "layer": HTML_NAME, "next_layer": MD_NAME, "a": 0, "b": 1,
           "level": 0.5, "count": 2, "important": True, "inherited": None}
    assert not _dangerous(_sent_html(pn.pane.Markdown(nv.describe_hit(hit)))[0])


# --------------------------------------------------------------------------------------------------
# URL parameters


def test_url_parameters_of_any_shape_are_clamped_or_ignored(source):
    """Panel's URL sync (the real `Location`) applies every parameter in one update: a value of the
    wrong type or out of range must not abort it (before, ``?experiment=1`` — parsed to the number 1
    — and ``?tab=-1`` dropped every other parameter of the link, the pair included)."""
    from panel.io.location import Location

    state = AppState(source, tab_count=len(TABS))  # as build_app makes it
    assert state.pair == "d1"
    query = {"experiment": "1", "pair": "d2", "tab": "-1", "classes": json.dumps([MD_NAME, 5, "nope"]),
             "layer_from": "99", "layer_to": "x", "reproject": "maybe", "hide_non_important": "[1]",
             "hide_source_weights": "true", "neuron": REFLECTED}
    location = Location(search="?" + "&".join(f"{k}={quote(v)}" for k, v in query.items()))
    location.sync(state, {p: p for p in URL_PARAMS})
    assert (state.experiment, state.pair, state.tab, state.classes) == ("1", "d2", 0, [MD_NAME])
    assert state.layer_from == len(state.bundle.layers) - 1 and state.layer_to == 2
    assert (state.reproject, state.hide_non_important, state.hide_source_weights) == (False, False, True)
    assert state.neuron == REFLECTED and state.error == ""
    for search in ("?tab=99&layer_to=-3&classes=%7B%22a%22%3A1%7D", "?classes=" + quote(HTML_NAME),
                   "?classes=" + quote("[[[[[") + "&tab=1.5&neuron=7"):
        location.search = search
        assert 0 <= state.tab < len(TABS) and state.layer_to >= 0
        assert set(state.classes) <= set(state.bundle.classes)
        for tab in _render_all_tabs(state):  # every view builds with what the link left, no error pane
            assert not _alerts(tab), search
    assert state.classes == [HTML_NAME]
    # the constructor takes the same values (build_app passes a link's parameters to it)
    app = build_app(source, sync_url=False, tab=-1, layer_from=-5, classes=["zzz", 3], reproject="x", neuron=[1])
    assert (app.state.tab, app.state.layer_from, app.state.classes, app.state.neuron) == (0, 0, [], "[1]")


def test_a_malformed_pair_or_experiment_id_is_an_error_and_nothing_is_fetched(tmp_path):
    """``?pair=/some/dir`` and ``?pair=../x`` reached the bundle cache as a path, which a bundle that
    does not validate gets deleted from; ``?experiment=../x`` reached the tracking server's query."""
    cache = tmp_path / "cache"
    victims = [tmp_path / "victim", tmp_path / "cache" / ".." / "sibling"]
    for v in victims:
        v.mkdir(parents=True)
        (v / "keep.txt").write_text("precious")
    state = AppState(TrackingSource(f"sqlite:///{tmp_path}/mlflow.db", cache_dir=cache))
    assert state.error == "" and state.pairs == []
    for pair in (str(victims[0]), "../sibling", REFLECTED, "a" * 300, "d1\n"):
        state.pair = pair
        assert state.bundle is None and not state.loading
        assert "Expected a diagnostics run id" in state.error and repr(pair)[:40] in state.error
    assert all((v / "keep.txt").read_text() == "precious" for v in victims)
    assert not cache.exists() or not any(cache.iterdir())  # nothing downloaded, nothing made
    state.experiment = "../x"
    assert "experiment id" in state.error and "'../x'" in state.error and state.pairs == [] and state.pair == ""
    state.experiment = "424242"  # well-formed, not on this server
    assert "no experiment with id '424242'" in state.error and state.pairs == []
    app = build_app(TrackingSource(f"sqlite:///{tmp_path}/mlflow.db", cache_dir=cache), sync_url=False,
                    pair=REFLECTED)
    assert "Expected a diagnostics run id" in app.state.error
    banner = [t for t in _sent_html(app) if "Expected a diagnostics run id" in t]
    assert banner and not [b for t in banner for b in _dangerous(t)]


# --------------------------------------------------------------------------------------------------
# Error states


def _corrupt(bundle_dir: Path, rel: str, data: bytes = b"PAR1 this is not a parquet file PAR1") -> None:
    """Overwrite one bundle file with garbage and record its new size and hash in the manifest, so the
    bundle opens (every hash matches) and the file fails only when a view reads it."""
    (bundle_dir / rel).write_bytes(data)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == rel:
            entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))


def test_an_unreadable_bundle_file_is_an_error_pane_in_its_tab(hostile_bundle, tmp_path):
    """A Parquet or .npy file that is garbage (its hash updated, so the bundle opens) fails the view that
    reads it: that view shows the escaped message with the fix, nothing escapes, the other tabs work
    (before, a corrupt similarity file read as "this class has no similarity data")."""
    broken = tmp_path / "broken"
    shutil.copytree(hostile_bundle, broken)
    similarity = f"similarity/c0/{PairBundle.open(hostile_bundle).layers[0]}.npy"  # the network view's first class
    for rel, data in (("statistics/history.parquet", b"PAR1 not parquet PAR1"),
                      ("instances/table.parquet", b"PAR1 not parquet PAR1"), (similarity, b"\x93NUMPY garbage")):
        _corrupt(broken, rel, data)
    target = "0123456789abcdef0123456789abcdef"
    state = AppState(MemorySource({"1": "e"}, {"1": [_row("b1", target_run_id=target)]}, {"b1": broken}))
    assert state.bundle is not None and state.error == "" and not state.loading
    statistics, instances, network, features, *_ = _render_all_tabs(state)
    for tab, rel in ((statistics, "statistics/history.parquet"), (instances, "instances/table.parquet")):
        (alert,) = [a for a in tab.select(pn.pane.Alert) if a.name == "view-error"]
        assert rel in alert.object and f"mlflow-transfer diagnose --target-run-id {target}" in alert.object
        assert not [b for t in _sent_html(tab) for b in _dangerous(t)]
    shown = " ".join(_sent_html(network))  # the figure's part of the network tab is the error pane
    assert _alerts(network) and similarity in shown and "no neuron similarity data" not in shown
    assert not _alerts(features)
    app = build_app(MemorySource({"1": "e"}, {"1": [_row("b1")]}, {"b1": broken}), sync_url=False)
    assert any("statistics/history.parquet" in t for t in _sent_html(app))  # the app's own tab, built lazily


def test_an_unexpected_error_opening_a_pair_ends_the_spinner(hostile_bundle):
    """Not a TransferError (a source holding something that is no bundle): the loading flag goes back
    to False, the page gets one sentence, the server log the traceback; the next pair opens."""
    state = AppState(MemorySource({"1": "e"}, {"1": [_row("ok"), _row("odd")]}, {"ok": hostile_bundle, "odd": 42}))
    assert state.pair == "ok" and state.bundle is not None
    state.pair = "odd"
    assert state.bundle is None and not state.loading and "unexpected error" in state.error
    state.pair = "ok"
    assert state.bundle is not None and state.error == ""


# --------------------------------------------------------------------------------------------------
# In the browser: a real mlflow server, the app served by `mlflow-transfer ui`, Chromium




def _log_hostile_run(uri: str, bundle_dir: Path) -> str:
    """A FINISHED diagnostics run with the usual tags, its experiment, run name and tags payloads."""
    from mlflow import MlflowClient

    from mlflow_transfer.tags import TAGS

    client = MlflowClient(uri)
    experiment = client.create_experiment(EXPERIMENT)
    tags = {TAGS.role: "diagnostics", TAGS.target_run_id: "0123456789abcdef0123456789abcdef",
            TAGS.source_run_id: HTML_NAME, TAGS.recipe: HTML_NAME, TAGS.pair_id: MD_NAME, TAGS.model: MD_NAME,
            TAGS.source_domain: ATTR_NAME, TAGS.target_domain: HTML_NAME, TAGS.frozen_layers: HTML_NAME,
            TAGS.layers: HTML_NAME, "mlflow.runName": HTML_NAME}
    run = client.create_run(experiment, tags=tags, run_name=HTML_NAME)
    client.log_artifacts(run.info.run_id, str(bundle_dir), "diagnostics")
    client.log_metric(run.info.run_id, "transferability_score", 0.4)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def hostile_app(hostile_bundle, tmp_path_factory):
    """The hostile pair on a real `mlflow server`, the app served by `mlflow-transfer ui`."""
    root = tmp_path_factory.mktemp("hostile-store")
    env = clean_env(MLFLOW_TRANSFER_CACHE=str(root / "cache"))
    with mlflow_server(root, env) as (uri, _):
        run_id = _log_hostile_run(uri, hostile_bundle)
        with transfer_ui(uri, root, env) as (url, _):
            yield {"url": url, "root": root, "run_id": run_id, "bundle": hostile_bundle}


@pytest.fixture()
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    yield page
    page.close()


def _no_script_ran(page, where: str) -> None:
    page.wait_for_timeout(300)  # an <img src=x>'s error event fires once its request fails
    assert page.evaluate(HOSTILE_ELEMENTS) == [], where
    assert page.dialogs == [], where


def _open(page, url: str, wait_for: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url)
    try:
        page.get_by_text(wait_for).first.wait_for(timeout=60_000)
    except PlaywrightTimeout:  # say what the page shows instead
        raise AssertionError(f"{wait_for!r} not shown at {page.url}; the page says: "
                             f"{page.locator('body').inner_text()[:600]!r}") from None


def _q(**params) -> str:
    return "?" + "&".join(f"{k}={quote(v if isinstance(v, str) else json.dumps(v))}" for k, v in params.items())


@pytest.mark.slow
@needs_chromium
def test_hostile_names_run_no_script_in_any_view_or_in_the_report(hostile_app, page, tmp_path):
    url = hostile_app["url"]
    bundle = PairBundle.open(hostile_app["bundle"])
    layer = bundle.layers[0]
    _open(page, url + _q(classes=[HTML_NAME]), "Transferability score")
    assert HTML_NAME in page.evaluate(PAGE_TEXT)  # the names are shown, as text
    _no_script_ran(page, "statistics")
    page.get_by_text("Instances", exact=True).click()
    page.get_by_text("dark ring").first.wait_for(timeout=60_000)
    page.locator(".choices").first.click()  # the class chooser's drop-down lists every class name
    _no_script_ran(page, "instances")
    page.get_by_text("Network", exact=True).click()
    page.get_by_text("click one for its patches").first.wait_for(timeout=60_000)
    _no_script_ran(page, "network")
    page.get_by_text("Features", exact=True).click()
    page.get_by_text("-fold CV accuracy").first.wait_for(timeout=60_000)
    _no_script_ran(page, "features")
    page.get_by_text("Robustness", exact=True).click()  # issue 13: gallery captions and the neuron table
    page.get_by_text("Inherited adversarial examples").first.wait_for(timeout=60_000)
    _no_script_ran(page, "robustness")
    # the neuron detail, and the empty states of the class without target-domain instances
    _open(page, url + _q(tab="2", classes=[HTML_NAME], neuron=f"target:{layer}:0"), f"{layer} · neuron 0")
    _no_script_ran(page, "neuron detail")
    _open(page, url + _q(tab="2", classes=[ATTR_NAME]), "has no neuron similarity data")
    _no_script_ran(page, "network, empty state")
    _open(page, url + _q(tab="3", classes=[ATTR_NAME]), "No domain discriminability")
    _no_script_ran(page, "features, empty state")
    # report.html, opened from disk
    from ui.report import write_report

    report = write_report(hostile_app["bundle"], tmp_path / "report.html")
    page.goto(report.as_uri())
    page.wait_for_function("() => document.querySelectorAll('.plot .bk-Canvas, .plot div').length > 0 "
                           "&& window.Bokeh && Bokeh.documents.length >= 4", timeout=60_000)
    assert HTML_NAME in page.evaluate(PAGE_TEXT) and "Robustness" in page.evaluate(PAGE_TEXT)
    _no_script_ran(page, "report.html")


@pytest.mark.slow
@needs_chromium
def test_hostile_url_parameters_run_no_script_and_leave_files_alone(hostile_app, page):
    url, root = hostile_app["url"], hostile_app["root"]
    victims = [root / "victim", root / "sibling"]  # the app's cache is root/cache: ../sibling is beside it
    for v in victims:
        v.mkdir(exist_ok=True)
        (v / "keep.txt").write_text("precious")
    # (a value starting with '[' that is not JSON, like MD_NAME, is dropped by Panel's query parser)
    for pair in (REFLECTED, str(victims[0]), "../sibling", "d1 " + MD_NAME):
        _open(page, url + _q(pair=pair), "Expected a diagnostics run id")
        _no_script_ran(page, f"pair={pair}")
    assert all((v / "keep.txt").read_text() == "precious" for v in victims)
    _open(page, url + _q(experiment=REFLECTED), "experiment id of letters")
    _no_script_ran(page, "experiment")
    # every other parameter at once, each malformed: ignored or clamped, the pair still opens
    _open(page, url + _q(tab=REFLECTED, classes=REFLECTED, neuron=REFLECTED, layer_from=REFLECTED,
                         layer_to="-5", reproject=REFLECTED, hide_non_important=MD_NAME,
                         hide_source_weights="[1]"), "Transferability score")
    _no_script_ran(page, "all parameters")
    _open(page, url + _q(tab="2", neuron=REFLECTED, layer_from="99", layer_to="-1"), "names no neuron of this pair")
    _no_script_ran(page, "neuron")
    _open(page, url + _q(tab="1", classes=[REFLECTED, MD_NAME, 5]), "dark ring")
    _no_script_ran(page, "classes")
    _open(page, url + _q(tab="3", classes=[ATTR_NAME, HTML_NAME]), "-fold CV accuracy")
    _no_script_ran(page, "features")
