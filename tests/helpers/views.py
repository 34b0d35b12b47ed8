"""Drawing the app's Viewers without a browser, as the app shows them."""

from __future__ import annotations


def drawn(viewer):
    """``viewer``'s layout with the parts a browser would show evaluated (its bokeh models built)."""
    layout = viewer.__panel__()
    layout.get_root()
    return layout


def find(layout, kind, name: str):
    """The object of type ``kind`` named ``name`` in ``layout`` (its current content)."""
    return next(o for o in layout.select(kind) if o.name == name)
