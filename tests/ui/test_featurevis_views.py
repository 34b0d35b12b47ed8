"""Feature visualisations in the app: the neuron detail panel (the clicked neuron and its five most similar)
and the feature ranking list show each neuron's stored optimised image; a bundle without them says so."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import panel as pn
import pytest
from helpers.views import drawn, find
from PIL import Image

from mlflow_transfer.bundle import PairBundle
from ui.readers import MemorySource
from ui.state import AppState
from ui.tabs.features import FeaturesTab
from ui.tabs.network import NetworkTab
from ui.views import features as fv
from ui.views import network as nv


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return PairBundle.open(tiny_bundle)


def _state(tiny_bundle, **params):
    row = {"diagnostics_run_id": "d1", "recipe": "digits", "model": "alexnet-32", "source_domain": "s",
           "target_domain": "t", "start_time": 1_700_000_000_000, "transferability_score": 0.4,
           "target_accuracy": 0.9, "frozen_layers": "[]"}
    return AppState(MemorySource({"1": "pairs"}, {"1": [row]}, {"d1": tiny_bundle}), **params)


def _png(pane) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(pane.object)).convert("RGB"))


def _vis(bundle, model, layer, n):
    rec = bundle.feature_vis(model, layer)
    return rec["images"][list(rec["neurons"]).index(n)]


def _important(bundle, model, layer):
    t = pd.DataFrame(bundle.important_neurons())
    return int(t[(t["model"] == model) & (t["layer"] == layer) & (t["class_index"] == 0)]["neuron"].iloc[0])


def test_detail_shows_the_clicked_neurons_image_and_those_of_its_five_most_similar(bundle):
    layer = "conv2"
    n = _important(bundle, "target", layer)
    panel = nv.neuron_detail(bundle, "a", f"target:{layer}:{n}")
    shown = [p for p in panel.select(pn.pane.PNG) if p.name == "feature-vis-image"]
    top, _ = bundle.most_similar("a", layer, "target", n)
    assert len(shown) == 1 + len(top) == 6
    np.testing.assert_array_equal(_png(shown[0]), _vis(bundle, "target", layer, n))
    for pane, j in zip(shown[1:], top):  # the similar neurons are the source model's
        np.testing.assert_array_equal(_png(pane), _vis(bundle, "source", layer, int(j)))
    assert "feature visualisation" in shown[0].alt_text


def test_ranking_shows_the_target_models_image_beside_the_patches(bundle):
    frame = fv.feature_frame(bundle, "a")
    assert list(frame.columns).index("visualisation") == list(frame.columns).index("patches") + 1
    for _, row in frame.head(3).iterrows():
        uri = row["visualisation"].split('src="')[1].split('"')[0]
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
        np.testing.assert_array_equal(image, _vis(bundle, "target", row["layer"], int(row["neuron"])))


def test_a_bundle_without_them_says_so(bundle, monkeypatch):
    monkeypatch.setattr(type(bundle), "feature_vis", lambda self, model, layer: None)  # an older bundle
    n = _important(bundle, "target", "conv2")
    panel = nv.neuron_detail(bundle, "a", f"target:conv2:{n}")
    assert not [p for p in panel.select(pn.pane.PNG) if p.name == "feature-vis-image"]
    assert len([r for r in panel.select(pn.Row) if r.name == "feature-vis"]) == 6  # each says "none"
    frame = fv.feature_frame(bundle, "a")
    assert set(frame["visualisation"]) == {"not in this bundle"}
    assert len(frame) and frame["patches"].str.contains("<img").all()  # the patches still show


def test_tabs_draw_the_images(tiny_bundle):
    bundle = PairBundle.open(tiny_bundle)
    n = _important(bundle, "target", "conv2")
    tab = NetworkTab(state=_state(tiny_bundle, neuron=f"target:conv2:{n}", classes=["a"]))
    layout = drawn(tab)
    detail = find(layout, pn.Column, "neuron-detail")
    assert len([p for p in detail.select(pn.pane.PNG) if p.name == "feature-vis-image"]) == 6
    features = FeaturesTab(state=_state(tiny_bundle, classes=["a"]))
    table = find(drawn(features), pn.widgets.Tabulator, "feature-ranking")
    assert table.value["visualisation"].str.startswith("<img").all()
    assert table.titles["visualisation"] == "optimised image"
