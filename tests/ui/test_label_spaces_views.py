"""Label spaces in the app's views (issue 12): an older bundle without the record reads as one label
space and says nothing; a corrupt record is refused; class names are escaped wherever they are shown."""

from __future__ import annotations

import json
import shutil

import pytest

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import BundleError
from ui.report import build_report_html
from ui.views import overview

HOSTILE = "<img src=x onerror=alert(1)>"


def _edited(tiny_bundle, tmp_path, **changes):
    folder = shutil.copytree(tiny_bundle, tmp_path / "b")
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return PairBundle.open(folder)


def test_a_bundle_without_the_record_has_one_label_space_all_shared(tiny_bundle, tmp_path):
    b = _edited(tiny_bundle, tmp_path, source_classes=None, target_classes=None, shared_classes=None)
    assert b.label_spaces() == {"source": b.classes, "target": b.classes, "shared": b.classes, "differ": False}
    assert overview.label_spaces_html(b.label_spaces()) == ""
    assert b.transferability_basis() is None
    assert "shared classes" not in build_report_html(b).lower()


def test_a_written_bundle_of_one_label_space_records_all_classes_shared(tiny_bundle):
    b = PairBundle.open(tiny_bundle)
    assert b.manifest["shared_classes"] == b.manifest["source_classes"] == b.manifest["target_classes"] == b.classes
    assert not b.label_spaces()["differ"]


def test_a_record_naming_other_classes_is_refused(tiny_bundle, tmp_path):
    b = _edited(tiny_bundle, tmp_path, shared_classes=["not a class"])
    with pytest.raises(BundleError, match="shared_classes"):
        b.label_spaces()


def test_class_names_and_the_basis_are_escaped(tiny_bundle, tmp_path):
    spaces = {"source": [HOSTILE, "a"], "target": ["a", "b"], "shared": ["a"], "differ": True}
    shown = overview.label_spaces_html(spaces, basis=HOSTILE)
    assert "<img" not in shown and "&lt;img src=x" in shown and "Shared classes" in shown
    none = overview.label_spaces_html({**spaces, "shared": []})
    assert overview.NO_SHARED_CLASSES in none
    # the report's header and badge: a hostile class name in the manifest stays text
    classes = PairBundle.open(tiny_bundle).classes
    b = _edited(tiny_bundle, tmp_path, classes=[HOSTILE, *classes[1:]], source_classes=[HOSTILE],
                target_classes=classes[1:], shared_classes=[], transferability_basis=HOSTILE)
    page = build_report_html(b)
    assert HOSTILE not in page and "No shared classes" in page


def test_the_hover_says_a_fresh_heads_epoch_0_is_at_chance():
    history = {"model": ["target", "target"], "dataset": ["target_val"] * 2, "epoch": [0, 1], "accuracy": [0.2, 0.8]}
    (start,) = [r for r in overview.accuracy_curves(history, fresh_head=True).renderers
                if r.name == overview.BEFORE_FINE_TUNING]
    assert "fresh last layer (chance accuracy)" in start.data_source.data["stage"][0]
    (start,) = [r for r in overview.accuracy_curves(history).renderers if r.name == overview.BEFORE_FINE_TUNING]
    assert "unchanged source model" in start.data_source.data["stage"][0]
