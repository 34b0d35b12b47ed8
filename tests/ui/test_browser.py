"""The app in a real browser: Debian's Chromium driven by Playwright, against a real `mlflow server`
subprocess holding a tiny diagnosed pair, the app served by `mlflow-transfer ui` on 127.0.0.1.

Screenshots of every view land in ``test-output/ui/`` for humans to look at.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from helpers.browser import needs_chromium
from helpers.servers import BIN, clean_env, free_port, mlflow_server, transfer_ui, wait_until_up

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "ui"
TINY = ("data.source.size=100,data.per_class_cap=12,source.epochs=1,target.epochs=1,"
        "source.batch_size=32,target.batch_size=32")

TRACKING: dict = {}  # the module's mlflow server: uri, env and folder, for a second app server

pytestmark = [pytest.mark.slow, needs_chromium]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-store")
    env = clean_env(MLFLOW_TRANSFER_CACHE=str(root / "cache"))
    subprocess.run([str(BIN / "mlflow-transfer"), "main", "--set", TINY, "--tracking-uri", f"sqlite:///{root}/mlflow.db",
                    "--experiment-name", "ui-tests", "--n-steps", "2", "--sample-per-class", "2",
                    "--feature-vis-steps", "1"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    with mlflow_server(root, env) as (uri, _), transfer_ui(uri, root, env) as (url, _):
        TRACKING.update(uri=uri, env=env, root=root)
        yield url


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_liveness_answers(served):
    with urllib.request.urlopen(served + "liveness", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read()) == {"/liveness": True}


def test_statistics_view_renders_and_a_row_click_selects_the_class(served, page):
    page.goto(served)
    page.get_by_text("Transferability score").wait_for(timeout=60_000)
    page.locator("canvas").first.wait_for(timeout=30_000)  # the bokeh accuracy chart
    assert page.get_by_text("ui-tests").count() >= 1 or page.locator("select").count() >= 1
    rows = page.locator(".tabulator-row")
    assert rows.count() >= 2  # the pair table and the confusion table have rows
    _shot(page, "statistics")
    confusion_rows = page.locator("[id] .tabulator").last.locator(".tabulator-row")
    confusion_rows.nth(3).click()  # class '3'
    page.wait_for_function("() => new URLSearchParams(location.search).get('classes') !== '[]'", timeout=30_000)
    classes = json.loads(parse_qs(urlparse(page.url).query)["classes"][0])
    assert classes == ["3"]


def test_instance_view_and_a_copied_url_restores_the_state(served, browser, page):
    page.goto(served)
    page.get_by_text("Transferability score").wait_for(timeout=60_000)
    page.get_by_text("Instances", exact=True).click()
    page.locator("canvas").last.wait_for(timeout=30_000)
    _shot(page, "instances")
    page.wait_for_function("() => new URLSearchParams(location.search).get('pair')", timeout=30_000)
    pair = parse_qs(urlparse(page.url).query)["pair"][0]
    link = f"{served}?pair={pair}&classes=%5B%227%22%2C%20%221%22%5D"
    fresh = browser.new_page(viewport={"width": 1400, "height": 1000})  # a new tab: nothing carried over
    fresh.goto(link)
    fresh.get_by_text("Transferability score").wait_for(timeout=60_000)
    fresh.get_by_text("Instances", exact=True).click()
    chosen = fresh.locator(".choices__list--multiple .choices__item")  # the chips, not the drop-down
    chosen.first.wait_for(timeout=30_000)
    assert sorted(t.replace("Remove item", "").strip() for t in chosen.all_inner_texts()) == ["1", "7"]
    assert parse_qs(urlparse(fresh.url).query)["pair"] == [pair]
    _shot(fresh, "instances-from-link")
    fresh.close()


# Every BokehJS view on the page, depth first (prefixed to the page scripts below).
_VIEWS = """function* views() {
  const seen = new Set();
  function* walk(v) {
    if (!v || seen.has(v)) return;
    seen.add(v); yield v;
    for (const c of (v.child_views ?? [])) yield* walk(c);
  }
  for (const root of Bokeh.index.roots ?? []) yield* walk(root);
}
"""

# Screen position of the first neuron index of the network figure: BokehJS knows where it drew each glyph.
_FIRST_NEURON_INDEX = """() => {""" + _VIEWS + """
  const doc = Bokeh.documents[0];
  const r = doc.get_model_by_name('neuron-index');
  if (!r) return null;
  for (const v of views()) {
    if (v.renderer_views instanceof Map && v.renderer_views.has(r)) {
      const g = v.renderer_views.get(r).glyph;
      if (!g.sleft || g.sleft.length === 0) return null;
      const box = v.canvas_view.el.getBoundingClientRect();
      return {x: box.left + (g.sleft[0] + g.sright[0]) / 2, y: box.top + (g.stop[0] + g.sbottom[0]) / 2,
              id: r.data_source.data.id[0]};
    }
  }
  return null;
}"""


# Titles of the bokeh plots the browser has drawn (views laid out on the page).
_DRAWN_TITLES = """() => {""" + _VIEWS + """
  const titles = [];
  for (const v of views())
    if (v.canvas_view && v.model.title && v.model.title.text && v.el.isConnected && v.el.offsetParent !== null)
      titles.push(v.model.title.text);
  return titles;
}"""


def test_network_view_a_neuron_click_opens_the_detail_panel(served, page):
    page.goto(served)
    page.get_by_text("Transferability score").wait_for(timeout=60_000)
    page.get_by_text("Network", exact=True).click()
    target = page.wait_for_function(_FIRST_NEURON_INDEX, timeout=60_000).json_value()
    page.mouse.click(target["x"], target["y"])
    page.wait_for_function("() => new URLSearchParams(location.search).get('neuron')", timeout=30_000)
    assert parse_qs(urlparse(page.url).query)["neuron"] == [target["id"]]
    _, layer, index = target["id"].split(":")
    page.get_by_text(f"{layer} · neuron {index}").wait_for(timeout=30_000)
    assert page.get_by_text("most similar").count() >= 1
    _shot(page, "network")
    page.get_by_text("Inheritance and CKA by depth", exact=True).click()
    both = f"""() => {{ const t = ({_DRAWN_TITLES})();
      return t.some(x => x.startsWith('Inheritance per layer')) && t.includes('Layer similarity (linear CKA)'); }}"""
    page.wait_for_function(both, timeout=60_000)
    _shot(page, "network-by-depth")


def test_feature_view_renders_the_ranking_and_the_biplot(served, page):
    page.goto(served)
    page.get_by_text("Transferability score").wait_for(timeout=60_000)
    page.get_by_text("Features", exact=True).click()
    page.get_by_text("-fold CV accuracy").first.wait_for(timeout=60_000)
    page.locator(".tabulator-row").last.wait_for(timeout=30_000)
    page.locator("canvas >> visible=true").first.wait_for(timeout=30_000)  # the biplot is drawn (its own part)
    _shot(page, "features")


def test_panel_serve_runs_the_same_app(served, browser):
    """`panel serve ui/app.py` (the README's other way in) over the same tracking server."""
    port = free_port()
    env = {**TRACKING["env"], "MLFLOW_TRACKING_URI": TRACKING["uri"]}
    proc = subprocess.Popen([str(BIN / "panel"), "serve", str(REPO / "ui" / "app.py"), "--port", str(port),
                             "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}",
                             "--liveness"], cwd=TRACKING["root"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/liveness", proc)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/app")
        page.get_by_text("Transferability score").wait_for(timeout=60_000)
        assert page.get_by_text(TRACKING["uri"]).count() >= 1  # the banner names the server it reads
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_raster_hover_names_row_domain_label_and_prediction(page):
    """The rasterised instance view's tooltip JS (``hover_formatter``), run in Chromium on ``hover_key``
    values: the half of the hover Python cannot run (tests/ui/test_state.py checks the key's half)."""
    import pandas as pd

    from ui.views import instances as iv

    names = [f"digit {i}" for i in range(12)]
    frame = pd.DataFrame({"row": [0, 7, 999_999, 123_456], "domain": ["source", "target", "target", "source"],
                          "label": [0, 11, 5, 3], "pred": [11, 11, 0, 3]})
    fmt = iv.hover_formatter(names)
    run = """([values, code, args]) => values.map(v =>
        new Function("value", "format", "special_vars", ...Object.keys(args), code)(v, null, {}, ...Object.values(args)))"""
    got = page.evaluate(run, [[*iv.hover_key(frame, len(names)).tolist(), float("nan")], fmt.code, fmt.args])
    assert got == [f"#{r.row} · {r.domain} domain · true {names[r.label]} · predicted {names[r.pred]}"
                   for r in frame.itertuples()] + ["none"]


@pytest.fixture(scope="module")
def served_foreign(tmp_path_factory):
    """A pair made from a tiny ViT-like classifier logged with plain `mlflow.pytorch.log_model` (no
    registry architecture): `main` with the recipe's `source.model_uri`, served like the demo pair."""
    import mlflow
    import mlflow.pytorch
    import torch
    from helpers.models import foreign

    root = tmp_path_factory.mktemp("ui-foreign")
    store = f"sqlite:///{root}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        experiment = mlflow.MlflowClient().create_experiment("foreign", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            uri = mlflow.pytorch.log_model(foreign("vit"), name="model", input_example=torch.rand(2, 3, 32, 32).numpy(),
                                           pip_requirements=["torch"]).model_uri
    finally:
        mlflow.set_tracking_uri(previous)
    env = clean_env(MLFLOW_TRANSFER_CACHE=str(root / "cache"))
    subprocess.run([str(BIN / "mlflow-transfer"), "main", "--set", f"{TINY},source.model_uri={uri}",
                    "--tracking-uri", store, "--experiment-name", "foreign", "--n-steps", "2",
                    "--sample-per-class", "2", "--feature-vis-steps", "1"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    with mlflow_server(root, env) as (uri_, _), transfer_ui(uri_, root, env) as (url, _):
        yield url


def test_a_foreign_vit_pair_in_the_network_view(served_foreign, page):
    page.goto(served_foreign)
    page.get_by_text("Transferability score").wait_for(timeout=60_000)
    page.get_by_text("Network", exact=True).click()
    target = page.wait_for_function(_FIRST_NEURON_INDEX, timeout=60_000).json_value()
    _, layer, _ = target["id"].split(":")
    assert layer in {"patch", "head"} | {f"blocks.{b}.{m}" for b in (0, 1)
                                         for m in ("attn.qkv", "attn.proj", "fc1", "fc2")}
    page.mouse.click(target["x"], target["y"])
    page.wait_for_function("() => new URLSearchParams(location.search).get('neuron')", timeout=30_000)
    assert page.get_by_text("most similar").count() >= 1
    _shot(page, "network-foreign-vit")
