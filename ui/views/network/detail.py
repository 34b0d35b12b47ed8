"""The neuron detail beside the zig-zag figure (paper Figure 1 C.1): a clicked neuron's feature
visualisation and top activating patches, and the most similar neurons of the other model, each with
theirs."""

from __future__ import annotations

import pandas as pd
import panel as pn

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import BundleError

from ..images import crop_patches, png_bytes, vis_image
from ..text import escape_html, escape_md, md_code, shorten
from .geometry import DOMAINS, MODEL_COLOR, OTHER

__all__ = ["neuron_detail", "parse_neuron_id", "patch_row", "vis_pane"]


def parse_neuron_id(neuron_id: str) -> tuple[str, str, int] | None:
    """``"model:layer:index"`` → (model, layer, index); None for '' or anything malformed."""
    try:
        model, rest = neuron_id.split(":", 1)
        layer, index = rest.rsplit(":", 1)
        index = int(index)
    except (AttributeError, ValueError):
        return None
    return (model, layer, index) if model in DOMAINS and index >= 0 else None


_PIXELATED = ["img {image-rendering: pixelated;}"]


def vis_pane(image, label: str, size: int) -> pn.viewable.Viewable:
    """A neuron's feature visualisation (optimised image, `ui.views.images.vis_image`), named
    ``feature-vis``, ``size`` pixels square; "none" when ``image`` is None (none stored for the neuron)."""
    head = pn.pane.HTML("<span style='font-size:0.85em'>optimised</span>", margin=(12, 2, 0, 6))
    if image is None:
        return pn.Row(head, pn.pane.HTML("<i style='font-size:0.8em'>none</i>", margin=(12, 2, 0, 2)),
                      margin=0, name="feature-vis")
    return pn.Row(head, pn.pane.PNG(png_bytes(image), width=size, height=size, margin=1, name="feature-vis-image",
                                    alt_text=escape_html(f"{label} feature visualisation"),
                                    stylesheets=_PIXELATED), margin=0, name="feature-vis")


def patch_row(patches: dict[str, list[dict]], label: str, size: int, vis=False) -> pn.layout.Row:
    """Each domain's patches (as :func:`crop_patches` gives them) in one row, ``size`` pixels square;
    ``label`` (plain text) names the neuron in their alt texts. ``vis``: the neuron's feature
    visualisation, shown first (None: "none"; False, the default: not shown)."""
    items = [] if vis is False else [vis_pane(vis, label, size)]
    for domain in DOMAINS:
        items.append(pn.pane.HTML(f"<span style='color:{MODEL_COLOR[domain]};font-size:0.85em'>{domain}</span>",
                                  margin=(12, 2, 0, 6)))
        for j, patch in enumerate(patches[domain]):
            # Panel writes alt_text into the tag with Python's repr quoting, which HTML does not read:
            # the layer name in it is escaped (quotes included) first
            items.append(pn.pane.PNG(png_bytes(patch["image"]), width=size, height=size, margin=1,
                                     alt_text=escape_html(f"{label} {domain}-domain patch {j + 1}: activation "
                                                          f"{patch['value']:.3g} on instance {patch['index']}"),
                                     stylesheets=_PIXELATED))
        if not patches[domain]:
            items.append(pn.pane.HTML("<i style='font-size:0.8em'>none</i>", margin=(12, 2, 0, 2)))
    return pn.Row(*items, margin=0)


def neuron_detail(bundle: PairBundle, cls: str, neuron_id: str, *, k: int = 5, on_select=None,
                  patch_px: int = 48, important: pd.DataFrame | None = None) -> pn.Column:
    """The detail panel of a clicked neuron (paper Figure 1 C.1), named ``neuron-detail``.

    Shows the neuron's feature visualisation (``bundle.feature_vis``; "none" in a bundle without it) and
    top activating patches of each data domain, and the ``k`` most similar neurons of the other model for
    class ``cls`` (from ``bundle.similarity``), each with its similarity, visualisation and patches.

    Args:
        neuron_id: ``"model:layer:index"``; '' or malformed gives a hint instead.
        on_select: called with a neuron id when a similar neuron's button is clicked (None: no buttons).
        important: the bundle's ``important_neurons()`` as a frame, when the caller already read it.
    """
    parsed = parse_neuron_id(neuron_id)
    if parsed is None or parsed[1] not in bundle.layers:
        hint = "Click a neuron index in the figure to see its patches and its most similar neurons."
        if neuron_id:  # a stale or hand-edited link: shown back, shortened and as code
            hint = f"{md_code(shorten(neuron_id))} names no neuron of this pair. " + hint
        return pn.Column(pn.pane.Markdown(hint), name="neuron-detail")
    model, layer, index = parsed
    other = OTHER[model]
    records = {}
    for m in DOMAINS:
        try:
            records[m] = bundle.patches(m, layer)
        except BundleError:
            records[m] = None

    def crop(m, n):
        return crop_patches(records[m], n) if records[m] is not None else {d: [] for d in DOMAINS}

    visuals = {}  # feature visualisations; a bundle without them shows "none"

    def vis(m, n):
        if m not in visuals:
            try:
                visuals[m] = bundle.feature_vis(m, layer)
            except BundleError:
                visuals[m] = None
        return vis_image(visuals[m], n)

    table = important if important is not None else pd.DataFrame(bundle.important_neurons())
    rank = table[(table["model"] == model) & (table["layer"] == layer) & (table["neuron"] == index) &
                 (table["class_index"] == bundle.classes.index(cls))]["rank"] if cls in bundle.classes else []
    status = (f"important for class {escape_md(cls)} (rank {int(rank.iloc[0]) + 1})" if len(rank)
              else f"not important for class {escape_md(cls)}")
    # model is one of DOMAINS (parse_neuron_id); layer and class names come from the bundle: escaped
    items = [pn.pane.Markdown(f"### <span style='color:{MODEL_COLOR[model]}'>{model}</span> model · {escape_md(layer)} · "
                              f"neuron {index}\n{status}. Top activating patches:", margin=(0, 5)),
             patch_row(crop(model, index), f"{model} {layer} #{index}", patch_px, vis(model, index))]
    if cls not in bundle.compared_classes:
        items.append(pn.pane.Markdown(f"Class {md_code(cls)} has no similarity data (no target-domain instances)."))
        return pn.Column(*items, name="neuron-detail")
    found = bundle.most_similar(cls, layer, model, index, k)  # an unreadable file raises: the view's guard shows it
    if found is None:
        items.append(pn.pane.Markdown(f"{escape_md(layer)} of the {model} model has no neuron #{index}."))
        return pn.Column(*items, name="neuron-detail")
    order, values = found
    items.append(pn.pane.Markdown(f"**Top {len(order)} most similar {other} neurons** (class {escape_md(cls)}):",
                                  margin=(8, 5, 0, 5)))
    for n, v in zip(order, values):
        head = [pn.pane.HTML(f"<span style='color:{MODEL_COLOR[other]}'>#{int(n)}</span> · similarity "
                             f"<b>{v:.3f}</b>", margin=(12, 5, 0, 5), width=150)]
        if on_select is not None:
            button = pn.widgets.Button(label="open", color="light", width=55, margin=(5, 2))
            button.on_click(lambda _e, nid=f"{other}:{layer}:{int(n)}": on_select(nid))
            head.append(button)
        items.append(pn.Row(*head, patch_row(crop(other, int(n)), f"{other} {layer} #{int(n)}", patch_px // 2 + 8,
                                             vis(other, int(n))),
                            margin=0))
    return pn.Column(*items, name="neuron-detail")
