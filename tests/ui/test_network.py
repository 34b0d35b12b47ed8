"""The network relation view (paper §5.3.3) without a browser: layout tables checked against the bundle,
the bokeh figure and its glyphs, and the tab's links with `AppState`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import panel as pn
import pytest
import torch
from bokeh.events import Tap
from helpers.views import drawn

from mlflow_transfer.bundle import PairBundle
from ui.readers import MemorySource
from ui.state import AppState
from ui.tabs.network import NetworkTab
from ui.views import network as nv
from ui.views.images import crop_patches


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return PairBundle.open(tiny_bundle)


@pytest.fixture(scope="module")
def tables(bundle):
    return pd.DataFrame(bundle.important_neurons()), pd.DataFrame(bundle.weights())


def _imp(tables, model, cls_index, layer):
    t = tables[0]
    part = t[(t["model"] == model) & (t["class_index"] == cls_index) & (t["layer"] == layer)]
    return part.sort_values("rank")["neuron"].to_numpy()


def _state(tiny_bundle, **params):
    source = MemorySource({"1": "pairs"}, {"1": [{"diagnostics_run_id": "d1"}]}, {"d1": tiny_bundle})
    return AppState(source, **params)


def _centre(row):
    return (row["x0"] + row["x1"]) / 2, (row["y0"] + row["y1"]) / 2


def test_important_block_holds_exactly_the_similarity_of_the_important_neurons(bundle, tables):
    z = nv.zigzag_data(bundle, "a", 0, 2, tables=tables)
    assert z.message == "" and z.layers == bundle.layers[:3]
    for k, layer in enumerate(z.layers):
        s = bundle.similarity("a", layer)  # [source, target]
        src, tgt = _imp(tables, "source", 0, layer), _imp(tables, "target", 0, layer)
        expected = s[np.ix_(src, tgt)] if z.rows[k] == "source" else s[np.ix_(src, tgt)].T
        cells = z.cells[z.cells["layer"] == layer]
        # rows and columns in rank order: the cell grid read back by position is the sliced matrix
        grid = cells.pivot(index="y0", columns="x0", values="similarity").to_numpy()
        np.testing.assert_array_equal(grid, expected.astype(grid.dtype))
        rows_in_order = cells.sort_values("y0").drop_duplicates("y0")["row_neuron"].to_numpy()
        np.testing.assert_array_equal(rows_in_order, tgt if z.rows[k] == "target" else src)


def test_zigzag_alternates_orientation_and_puts_each_models_weights_in_a_corner(bundle, tables):
    z = nv.zigzag_data(bundle, "a", 0, 3, tables=tables)
    assert z.rows == ["target", "source", "target", "source"]
    for k, layer in enumerate(z.layers):
        cells = z.cells[z.cells["layer"] == layer]
        assert set(cells["row_model"]) == {z.rows[k]} and set(cells["col_model"]) == {nv.OTHER[z.rows[k]]}
        idx = z.indices[z.indices["layer"] == layer]
        assert set(idx[idx["axis"] == "row"]["model"]) == {z.rows[k]}
    w = z.weight_cells
    for k in range(1, len(z.layers)):
        pair = w[w["layer"] == z.layers[k - 1]]
        below = pair[pair["model"] == z.rows[k]]      # below-left of the diagonal
        above = pair[pair["model"] == z.rows[k - 1]]  # above-right
        assert len(below) and len(above) and (below["y0"] > below["x0"]).all() and (above["x0"] > above["y0"]).all()
    assert set(w[w["layer"] == "conv1"]["model"]) == {"source", "target"}


def test_weight_cells_show_the_mean_levels_and_red_dots_are_the_inherited_rows(bundle, tables):
    z = nv.zigzag_data(bundle, "b", 0, len(bundle.layers) - 1, tables=tables)
    w = z.weight_cells
    for model in ("source", "target"):
        part = w[(w["model"] == model) & (w["layer"] == "conv2")]
        levels = bundle.weight_matrices(model, "b", "conv2")["levels"]  # (N_next, N_prev)
        np.testing.assert_array_equal(part["level"].to_numpy(), levels[part["b"], part["a"]])
        assert len(part) == len(_imp(tables, model, 1, "conv2")) * len(_imp(tables, model, 1, "conv3"))
    wt = tables[1]
    rows = wt[(wt["model"] == "target") & (wt["class_index"] == 1) & (wt["inherited"] == True)]
    drawable = {(r.layer, r.a, r.b) for r in rows.itertuples()
                if r.a in _imp(tables, "target", 1, r.layer) and r.b in _imp(tables, "target", 1, r.next_layer)}
    dots = set(zip(z.dots["layer"], z.dots["a"], z.dots["b"]))
    assert dots == drawable and len(dots) > 0
    assert set(z.dots["model"]) == {"target"}  # only target weights are matched with the source
    # the pie glyph of a boxplot is the inherited share of that neuron's important links
    boxes = z.boxes[(z.boxes["model"] == "target") & (z.boxes["n_important"] > 0)]
    assert len(boxes) and (z.boxes[z.boxes["model"] == "source"]["share"].isna()).all()
    for box in boxes.itertuples():
        layer = box.layer if box.side == "prev" else box.next_layer
        others = set(_imp(tables, "target", 1, box.next_layer if box.side == "prev" else box.layer))
        end = "a" if box.side == "prev" else "b"
        links = wt[(wt["model"] == "target") & (wt["class_index"] == 1) & (wt["layer"] == box.layer)
                   & (wt[end] == box.neuron)]
        links = links[~links["b" if end == "a" else "a"].isin(others)]  # those towards non-important neurons
        assert box.n_important == len(links) and layer in bundle.layers
        assert box.share == pytest.approx(links["inherited"].astype(bool).mean())


def test_toggles_remove_the_non_important_regions_and_the_source_weights(bundle, tables):
    full = nv.zigzag_data(bundle, "a", 0, 2, tables=tables)
    assert len(full.sim_bars) and len(full.boxes) and len(full.weight_bars)
    lean = nv.zigzag_data(bundle, "a", 0, 2, hide_non_important=True, tables=tables)
    assert lean.sim_bars.empty and lean.boxes.empty and lean.weight_bars.empty and lean.pies == []
    assert set(lean.regions["region"]) == {"imp×imp"} and lean.width < full.width
    pd.testing.assert_series_equal(lean.cells["similarity"], full.cells["similarity"])
    no_source = nv.zigzag_data(bundle, "a", 0, 2, hide_source_weights=True, tables=tables)
    assert set(no_source.weight_cells["model"]) == {"target"}
    assert "source" not in set(no_source.regions["model"]) and set(no_source.boxes["model"]) == {"target"}
    assert len(no_source.cells) == len(full.cells)


def test_a_click_finds_the_neuron_index_or_the_weight_under_it(bundle, tables):
    z = nv.zigzag_data(bundle, "a", 0, 2, tables=tables)
    glyph = z.indices.iloc[3]
    hit = z.hit(glyph["x"], glyph["y"])
    assert hit["kind"] == "neuron" and hit["id"] == f"{glyph['model']}:{glyph['layer']}:{glyph['neuron']}"
    cell = z.weight_cells.iloc[0]
    hit = z.hit(*_centre(cell))
    assert hit["kind"] == "weight" and (hit["a"], hit["b"]) == (cell["a"], cell["b"])
    text = nv.describe_hit(hit)
    assert f"#{cell['a']}" in text and f"#{cell['b']}" in text and f"{cell['level']:.4g}" in text
    sim = z.cells.iloc[5]
    assert nv.describe_hit(z.hit(*_centre(sim))).endswith(f"{sim['similarity']:.3f}")
    assert z.hit(-5, -5) is None


def test_top_similar_neurons_are_the_argsort_of_the_similarity_row(bundle):
    s = bundle.similarity("a", "conv2")
    idx, val = bundle.most_similar("a", "conv2", "target", 7)
    np.testing.assert_array_equal(idx, np.argsort(-s[:, 7], kind="stable")[:5])
    np.testing.assert_array_equal(val, s[idx, 7])
    idx, _ = bundle.most_similar("a", "conv2", "source", 3, k=3)
    np.testing.assert_array_equal(idx, np.argsort(-s[3, :], kind="stable")[:3])
    assert bundle.most_similar("a", "conv2", "source", s.shape[0]) is None  # no such neuron
    assert bundle.most_similar("a", "conv2", "target", -1) is None


def test_crop_patches_cuts_the_neurons_rows_out_of_the_sprite(bundle):
    rec = bundle.patches("target", "conv2")
    i, n = 1, int(rec["neurons"][1])
    out = crop_patches(rec, n)
    p = rec["sprite"].shape[1] // rec["values"].shape[2]
    assert [len(out[d]) for d in ("source", "target")] == [int((rec["indices"][i, d] >= 0).sum()) for d in (0, 1)]
    np.testing.assert_array_equal(out["target"][0]["image"], rec["sprite"][3 * p:4 * p, :p])
    assert out["source"][0]["value"] == pytest.approx(float(rec["values"][i, 0, 0]))
    assert crop_patches(rec, 10_000) == {"source": [], "target": []}


def test_neuron_detail_shows_the_patches_of_the_neuron_and_its_five_most_similar(bundle, tables):
    layer, n = "conv2", int(_imp(tables, "target", 0, "conv2")[0])
    panel = nv.neuron_detail(bundle, "a", f"target:{layer}:{n}")
    assert panel.name == "neuron-detail"
    top, values = bundle.most_similar("a", layer, "target", n)
    own = crop_patches(bundle.patches("target", layer), n)
    src = bundle.patches("source", layer)  # the source model's patches of each similar neuron
    expected = sum(map(len, own.values())) + sum(len(v) for j in top for v in crop_patches(src, int(j)).values())
    images = [p for p in panel.select(pn.pane.PNG) if p.name != "feature-vis-image"]  # patches only
    assert len(own["source"]) + len(own["target"]) > 0 and len(images) == expected
    text = " ".join(str(getattr(p, "object", "")) for p in panel.select(pn.pane.HTML))
    assert all(f"#{int(j)}" in text and f"{v:.3f}" in text for j, v in zip(top, values))
    assert "rank 1" in " ".join(p.object for p in panel.select(pn.pane.Markdown))
    for bad in ("", "nonsense", "target:nolayer:1", "source:conv2:x"):
        assert not nv.neuron_detail(bundle, "a", bad).select(pn.pane.PNG)


def test_empty_states_are_messages_not_exceptions(bundle, tables, monkeypatch):
    z = nv.zigzag_data(bundle, "c", 0, 2, tables=tables)  # 'c' has no target-domain instances
    assert "no neuron similarity data" in z.message and z.cells.empty
    assert nv.zigzag_figure(z).title.text == z.message
    detail = nv.neuron_detail(bundle, "c", "source:conv1:0")
    assert "no similarity data" in " ".join(p.object for p in detail.select(pn.pane.Markdown))
    assert "not in this pair" in nv.zigzag_data(bundle, "zzz", 0, 1).message
    one = nv.zigzag_data(bundle, "a", 2, 2, tables=tables)
    assert one.layers == ["conv3"] and one.weight_cells.empty and "One layer" in one.notes[0]
    assert nv.zigzag_figure(one).title.text == "Class a: conv3"
    monkeypatch.setattr(type(bundle), "weight_matrices", lambda *a, **k: None)  # a bundle before schema 1.1
    old = nv.zigzag_data(bundle, "a", 0, 2, tables=tables)
    assert old.weight_cells.empty and not old.cells.empty and "schema 1.1" in old.notes[0]


def test_figure_renders_with_bokeh_and_names_the_neuron_index_glyphs(bundle, tables):
    z = nv.zigzag_data(bundle, "a", 0, 2, tables=tables)
    fig = nv.zigzag_figure(z)
    named = [r for r in fig.renderers if r.name == "neuron-index"]
    assert len(named) == 1 and len(named[0].data_source.data["id"]) == len(z.indices)
    assert len(fig.renderers) < 20  # one renderer per kind of glyph, not per layer
    cells = next(r for r in fig.renderers if "row_model" in r.data_source.data)
    shades = cells.glyph.fill_color.transform  # the paper's fixed scale by default, stated by the colour bar
    assert (shades.low, shades.high) == (0.0, 1.0) and shades in [bar.color_mapper for bar in fig.right]
    auto = next(r for r in nv.zigzag_figure(z, similarity_scale="auto").renderers if "row_model" in r.data_source.data)
    shades = auto.glyph.fill_color.transform  # the option: the shades span the shown cells' cosines
    assert (shades.low, shades.high) == pytest.approx((z.cells["similarity"].min(), z.cells["similarity"].max()))


def test_network_tab_is_linked_both_ways_with_the_app_state(tiny_bundle):
    state = _state(tiny_bundle, layer_from=0, layer_to=2)
    tab = drawn(NetworkTab(state=state))
    select = tab.select(pn.widgets.Select)[0]
    slider = tab.select(pn.widgets.IntRangeSlider)[0]
    assert select.value == "a" and slider.value == (0, 2) and slider.end == len(state.bundle.layers) - 1
    select.value = "b"
    assert state.classes == ["b"]
    state.select_class("a", add=True)  # a multi-class selection made elsewhere is not narrowed
    assert state.classes == ["a", "b"] and select.value == "a"
    slider.value = (1, 3)
    assert (state.layer_from, state.layer_to) == (1, 3)
    state.layer_to = 4
    assert slider.value == (1, 4)
    boxes = {b.label: b for b in tab.select(pn.widgets.Checkbox)}
    boxes["Hide source weights"].value = True
    assert state.hide_source_weights

    def figure_pane():
        return next(p for p in tab.select(pn.pane.Bokeh) if p.name == "network")

    drawn_weights = set()  # the model of every weight glyph (cells, dots, boxes, histograms, their frames)
    for r in figure_pane().object.renderers:
        d = r.data_source.data
        if "model" in d and "axis" not in d:  # not the neuron indices, which both models keep
            drawn_weights |= {m for m, k in zip(d["model"], d.get("kind", ["weights"] * len(d["model"])))
                              if k == "weights"}
    assert drawn_weights == {"target"}
    # a click on a neuron index sets state.neuron and the detail panel follows
    fig = figure_pane().object
    glyphs = nv.zigzag_data(state.bundle, "a", 1, 4, hide_source_weights=True).indices
    first = glyphs[glyphs["model"] == "target"].iloc[0]
    fig._trigger_event(Tap(fig, x=first["x"], y=first["y"]))  # what bokeh does with a click's event
    assert state.neuron == first["id"]
    detail = next(p for p in tab.select(pn.Column) if p.name == "neuron-detail")
    assert f"neuron {first['neuron']}" in detail[0].object and detail.select(pn.pane.PNG)
    tab.select(pn.Tabs)[0].active = 1  # the by-depth summaries, drawn when shown
    tab.get_root()
    names = {p.name for p in tab.select(pn.pane.HoloViews)} | {p.name for p in tab.select(pn.pane.Bokeh)}
    assert {"network", "inheritance", "cka"} <= names
    # a class without similarity data shows the empty state in place of the figure
    select.value = "c"
    assert state.classes == ["c"]
    empty = [p for p in tab.select(pn.pane.Markdown) if p.name == "network"]
    assert empty and "no neuron similarity data" in empty[0].object
    tab.get_root()  # the whole tab builds a bokeh document


# --------------------------------------------------------------------------------------------------
# The encodings of §5.3.3 / Figure 4: weight values, box thickness, edge counts, similarity scale, kernels


@pytest.fixture(scope="module")
def tiny_models():
    """The tiny bundle's two models, rebuilt as `helpers.bundles.write_tiny_bundle` builds them (seed 0):
    the reference for the weight values and kernels the bundle stores."""
    from mlflow_transfer.models import build_model

    torch.manual_seed(0)
    return {"source": build_model("alexnet-32", 3).eval(), "target": build_model("alexnet-32", 3).eval()}


def test_weight_cells_are_coloured_by_the_signed_sum_of_the_links_kernel(bundle, tables, tiny_models):
    z = nv.zigzag_data(bundle, "a", 0, len(bundle.layers) - 1, tables=tables)
    w = z.weight_cells
    checked = 0
    for (model, layer, nxt), part in w.groupby(["model", "layer", "next_layer"]):
        weight = tiny_models[model].analysis_layers[nxt].weight.detach().double().numpy()
        n_prev = len(bundle.weight_matrices(model, "a", layer)["levels"][0])
        sums = weight.reshape(weight.shape[0], n_prev, -1).sum(-1)  # (N_next, N_prev), from the module itself
        expected = sums[part["b"], part["a"]]
        np.testing.assert_allclose(part["value"], expected, rtol=2e-3, atol=2e-3)  # float16 in the bundle
        clear = np.abs(expected) > 1e-2
        assert (np.sign(part["tone"])[clear] == np.sign(expected)[clear]).all()  # the colour's side of 0
        assert part["tone"].abs().max() <= 1.0
        checked += clear.sum()
    assert checked > 50
    fig = nv.zigzag_figure(z)
    cells = fig.select_one({"name": "weight-cells"})
    mapper = cells.glyph.fill_color.transform  # diverging, centred at 0: negative one side, positive the other
    assert cells.glyph.fill_color.field == "tone" and (mapper.low, mapper.high) == (-1, 1)
    assert list(mapper.palette) == list(nv.WEIGHT_PALETTE) and mapper in [bar.color_mapper for bar in fig.right]
    # the switch: the activated level in grey, as before
    levels = nv.zigzag_data(bundle, "a", 0, 2, tables=tables, weight_encoding="activated level")
    cells = nv.zigzag_figure(levels).select_one({"name": "weight-cells"})
    assert cells.glyph.fill_color.field == "shade" and levels.weight_encoding == "activated level"
    with pytest.raises(ValueError, match="encoding"):
        nv.zigzag_data(bundle, "a", 0, 2, tables=tables, weight_encoding="brightness")


def test_planted_weight_values_give_the_tone_and_the_boxes(bundle, tables, monkeypatch):
    real = bundle.weight_kernels

    def planted(model, layer):
        found = real(model, layer)
        if found is None:
            return None
        values = np.ones(found["values"].shape, np.float16)
        values[:, 0] = -4.0  # every link from neuron 0 of the previous layer: strongly negative
        return {**found, "values": values}

    monkeypatch.setattr(bundle, "weight_kernels", planted)
    z = nv.zigzag_data(bundle, "a", 0, 2, tables=tables)
    w = z.weight_cells
    assert (w[w["a"] == 0]["tone"] == -1.0).all() and (w[w["a"] != 0]["tone"] == 0.25).all()
    assert len(w[w["a"] == 0]) > 0
    # boxes summarise the values: a row neuron of the previous layer is all -4 or all 1
    boxes = z.boxes[(z.boxes["side"] == "prev")]
    assert set(boxes["median"]) <= {-4.0, 1.0} and len(boxes)
    levels = nv.zigzag_data(bundle, "a", 0, 2, tables=tables, weight_encoding="activated level")
    assert not set(levels.boxes["median"]) <= {-4.0, 1.0}


def test_box_thickness_is_proportional_to_the_important_links_in_the_row(bundle, tables):
    z = nv.zigzag_data(bundle, "b", 0, len(bundle.layers) - 1, tables=tables)
    regions = z.regions[z.regions["kind"] == "weights"]
    for (model, layer), block in z.boxes.groupby(["model", "layer"]):
        most = block["n_important"].max()
        expected = 0.8 * block["n_important"] / most if most else 0.0 * block["n_important"]
        np.testing.assert_allclose(block["thickness"], expected)
        # drawn across the row: boxes of the important rows sit in the strip to their right (thickness
        # along y), those of the important columns in the strip below (thickness along x)
        right = regions[(regions["model"] == model) & (regions["layer"] == layer) & (regions["region"] == "imp×non")]
        for r in block.itertuples():
            cy = (r.y0 + r.y1) / 2
            in_rows = ((right["y0"] <= cy) & (cy <= right["y1"]) & (right["x0"] <= r.x0)).any()
            across = r.y1 - r.y0 if in_rows else r.x1 - r.x0
            assert across == pytest.approx(r.thickness)
    assert z.boxes["thickness"].max() == pytest.approx(0.8) and (z.boxes["thickness"] < 0.8).any()


def test_edge_counts_are_the_important_weights_meeting_each_group(bundle, tables):
    z = nv.zigzag_data(bundle, "b", 0, 3, tables=tables)
    wt = tables[1]
    assert len(z.edges) == 4 * len(z.regions[(z.regions["kind"] == "weights") & (z.regions["region"] == "imp×imp")])
    for e in z.edges.itertuples():
        links = wt[(wt["model"] == e.model) & (wt["class_index"] == 1) & (wt["layer"] == e.layer)]
        end = "a" if e.neurons_of == e.layer else "b"
        important = set(_imp(tables, e.model, 1, e.neurons_of))
        inside = links[end].isin(important)
        assert e.n == (inside.sum() if e.group == "important" else (~inside).sum()), e
        assert e.label == str(e.n)
    # each side's two groups share all the block's important weights
    for _, side in z.edges.groupby(["model", "layer", "axis"]):
        links = wt[(wt["model"] == side["model"].iloc[0]) & (wt["class_index"] == 1) &
                   (wt["layer"] == side["layer"].iloc[0])]
        assert side["n"].sum() == len(links)
    fig = nv.zigzag_figure(z)
    assert len(fig.select_one({"name": "edge-counts"}).data_source.data["n"]) == len(z.edges)
    lean = nv.zigzag_data(bundle, "b", 0, 3, tables=tables, hide_non_important=True)
    assert set(lean.edges["group"]) == {"important"}


def test_similarity_brightness_on_the_papers_fixed_scale():
    fixed = nv.similarity_mapper(np.array([0.91, 0.99]))
    assert (fixed.low, fixed.high) == (0.0, 1.0)
    assert fixed.palette[0].lower() == "#ffffff" and fixed.palette[-1].lower() == "#000000"  # 0 white, 1 black
    auto = nv.similarity_mapper(np.array([0.91, 0.99]), "auto")
    assert (auto.low, auto.high) == pytest.approx((0.91, 0.99))
    with pytest.raises(ValueError, match="scale"):
        nv.similarity_mapper(np.array([0.5]), "log")


def _kernel_image(row, model):
    """The 2-D image (or 1-D bars) a kernel figure of ``model`` draws."""
    fig = next(p.object for p in row.select(pn.pane.Bokeh) if p.object.select_one({"name": f"kernel-{model}"}))
    r = fig.select_one({"name": f"kernel-{model}"})
    data = r.data_source.data
    return (np.asarray(data["image"][0]) if "image" in data else np.asarray(data["top"])), fig


def test_clicked_kernels_are_the_modules_weights_in_both_models(bundle, tiny_models):
    for prev, nxt, a, b in (("conv2", "conv3", 4, 9), ("conv5", "fc6", 3, 17), ("fc6", "fc7", 11, 5)):
        row = nv.kernel_row(bundle, prev, nxt, a, b)
        assert row.name == "weight-kernels"
        for model in ("source", "target"):
            weight = tiny_models[model].analysis_layers[nxt].weight.detach().numpy()
            expected = {"conv3": lambda: weight[b, a], "fc6": lambda: weight[b].reshape(96, 4, 4)[a],
                        "fc7": lambda: weight[b]}[nxt]()
            image, fig = _kernel_image(row, model)
            np.testing.assert_allclose(image, expected, rtol=1e-3, atol=1e-4)
            if nxt == "fc7":  # the weight row with the clicked input marked
                assert list(fig.select_one({"name": "clicked-input"}).data_source.data["x"]) == [a]
        highs = set()
        for model in ("source", "target"):
            glyph = _kernel_image(row, model)[1].select_one({"name": f"kernel-{model}"}).glyph
            highs.add((glyph.fill_color.transform if nxt == "fc7" else glyph.color_mapper).high)
        assert len(highs) == 1  # one scale for both models
    assert "No kernel" in nv.kernel_row(bundle, bundle.layers[-1], "none", 0, 0).object  # the last layer


def test_a_bundle_without_weight_values_shows_levels_and_says_so(bundle, tables, monkeypatch):
    monkeypatch.setattr(type(bundle), "weight_kernels", lambda *a, **k: None)
    z = nv.zigzag_data(bundle, "a", 0, 2, tables=tables)
    assert z.weight_cells["value"].isna().all() and any("No weight values" in n for n in z.notes)
    assert len(z.boxes) and z.boxes["median"].notna().all()
    nv.zigzag_figure(z)  # NaN tones are drawn in the mapper's nan colour
    assert "No kernel" in nv.kernel_row(bundle, "conv1", "conv2", 0, 0).object


def test_network_tab_switches_and_a_clicked_weight_shows_its_kernels(tiny_bundle, tiny_models):
    state = _state(tiny_bundle, layer_from=0, layer_to=2)
    tab = NetworkTab(state=state)
    layout = drawn(tab)

    def figure():
        return next(p for p in layout.select(pn.pane.Bokeh) if p.name == "network").object

    assert figure().select_one({"name": "weight-cells"}).glyph.fill_color.field == "tone"
    next(w for w in layout.select(pn.widgets.RadioButtonGroup) if w.name == "weight-encoding").value = \
        "activated level"
    assert tab.weight_encoding == "activated level"
    assert figure().select_one({"name": "weight-cells"}).glyph.fill_color.field == "shade"
    next(w for w in layout.select(pn.widgets.RadioButtonGroup) if w.name == "similarity-scale").value = "auto"
    cells = next(r for r in figure().renderers if "row_model" in r.data_source.data)
    assert cells.glyph.fill_color.transform.low > 0
    z = nv.zigzag_data(state.bundle, "a", 0, 2)
    cell = z.weight_cells.iloc[0]
    fig = figure()
    fig._trigger_event(Tap(fig, x=(cell["x0"] + cell["x1"]) / 2, y=(cell["y0"] + cell["y1"]) / 2))
    detail = next(p for p in layout.select(pn.Column) if p.name == "weight-detail")
    assert f"#{cell['a']}" in detail[0].object
    kernels = next(p for p in detail.select(pn.Column) if p.name == "weight-kernels")
    image, _ = _kernel_image(kernels, "source")
    weight = tiny_models["source"].analysis_layers[cell["next_layer"]].weight.detach().numpy()
    np.testing.assert_allclose(image, weight[cell["b"], cell["a"]], rtol=1e-3, atol=1e-4)
    layout.get_root()


def _md_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[0]: r[1:] for r in rows[1:]}  # layer -> cells, header dropped


def test_layer_stability_table_shows_each_layers_stability_and_silent_counts(bundle):
    from ui.views.stability import layer_stability_md

    text = layer_stability_md(bundle, "b", bundle.layers[1:4])
    rows = _md_rows(text)
    assert list(rows) == bundle.layers[1:4]
    for layer, (k, st_t, st_s, sil_t, sil_s) in rows.items():
        t, s = bundle.stability("b", "target")[layer], bundle.stability("b", "source")[layer]
        assert k == str(t["k"]) and st_t.startswith(f"{t['stability']:.2f}") and st_s.startswith(f"{s['stability']:.2f}")
        assert ("(unsettled)" in st_t) == (t["stability"] < 0.8)
        assert sil_t == "{} / {}".format(*bundle.silent_neurons("b", "target")[layer])
        assert sil_s == "{} / {}".format(*bundle.silent_neurons("b", "source")[layer])
    assert "20 resamples of 12 instances" in text
    assert "not analysed" in layer_stability_md(bundle, "c")


def test_stability_text_says_why_not_computed_and_escapes_the_reason():
    from ui.views.stability import stability_text

    assert stability_text({"stability": 0.912, "reason": ""}) == "0.91"
    assert stability_text({"stability": 0.5, "reason": ""}) == "0.50 (unsettled)"
    from ui.views.text import escape_md

    reason = "<img src=x onerror=alert(1)> [x](javascript:y)"
    assert stability_text({"stability": float("nan"), "reason": reason}) == f"not computed: {escape_md(reason)}"
    assert escape_md(reason) != reason


def test_network_tab_shows_the_stability_of_the_shown_class_and_layers(tiny_bundle):
    state = _state(tiny_bundle, layer_from=0, layer_to=2)
    tab = drawn(NetworkTab(state=state))

    def pane():
        return next(p for p in tab.select(pn.pane.Markdown) if p.name == "layer-stability")

    assert list(_md_rows(pane().object)) == state.bundle.layers[:3] and "Important neurons of a" in pane().object
    state.param.update(classes=["b"], layer_from=2, layer_to=4)
    assert list(_md_rows(pane().object)) == state.bundle.layers[2:5] and "Important neurons of b" in pane().object


def test_a_bundle_without_stability_says_so_in_the_network_tab(tiny_bundle, tmp_path):
    import shutil

    from helpers.bundles import without_records
    from ui.views.stability import NOT_IN_BUNDLE

    old = without_records(shutil.copytree(tiny_bundle, tmp_path / "old"), "neurons/stability", "neurons/silent")
    tab = drawn(NetworkTab(state=_state(old)))
    assert next(p for p in tab.select(pn.pane.Markdown) if p.name == "layer-stability").object == NOT_IN_BUNDLE
    assert next(p for p in tab.select(pn.pane.Bokeh) if p.name == "network")  # the rest is drawn as before
