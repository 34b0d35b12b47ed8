"""Bundle files round-trip; broken bundles are refused with a message that says what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlflow_transfer.bundle import SCHEMA_VERSION, BundleReader, BundleWriter, validate_bundle
from mlflow_transfer.errors import BundleError


@pytest.fixture()
def bundle(tmp_path):
    w = BundleWriter(tmp_path / "b")
    w.write_array("arrays/x", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.write_array("arrays/mask", np.array([True, False]))
    w.write_table("tables/t", {"cls": ["a", "b", "c"], "acc": np.array([0.5, 1.0, 0.25]),
                               "pairs": [[1, 2], [], [3]]})
    w.write_json("meta/options", {"k": 0.1, "layers": ["conv1", "fc8"], "none": None})
    w.write_png("images/p", (np.arange(48).reshape(4, 4, 3) * 5).astype(np.uint8))
    manifest = w.finish(runs={"source": "s", "target": "t"})
    return tmp_path / "b", manifest


def test_every_kind_round_trips(bundle):
    root, manifest = bundle
    r = BundleReader(root)
    np.testing.assert_array_equal(r.read_array("arrays/x"), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert r.read_array("arrays/x").dtype == np.float32
    np.testing.assert_array_equal(r.read_array("arrays/mask"), [True, False])
    t = r.read_table("tables/t")
    assert t["cls"] == ["a", "b", "c"] and t["pairs"] == [[1, 2], [], [3]]
    np.testing.assert_array_equal(t["acc"], [0.5, 1.0, 0.25])
    assert r.read_json("meta/options") == {"k": 0.1, "layers": ["conv1", "fc8"], "none": None}
    np.testing.assert_array_equal(r.read_png("images/p"), (np.arange(48).reshape(4, 4, 3) * 5).astype(np.uint8))
    assert r.manifest["runs"] == {"source": "s", "target": "t"}
    assert r.manifest["schema_version"] == SCHEMA_VERSION
    assert r.names("array") == ["arrays/mask", "arrays/x"]
    assert validate_bundle(root)["files"] == manifest["files"]


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(BundleError, match="numeric arrays only"):
        BundleWriter(tmp_path / "b").write_array("x", np.array([{"a": 1}], dtype=object))


def test_npy_files_never_need_pickle(bundle):
    root, _ = bundle
    for path in root.rglob("*.npy"):
        np.load(path, allow_pickle=False)


def test_missing_manifest_means_incomplete(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match="not a complete diagnostics bundle"):
        BundleReader(tmp_path / "b")


def test_unknown_major_version_is_refused(bundle):
    root, manifest = bundle
    manifest["schema_version"] = "2.0.0"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version 2.0.0"):
        BundleReader(root)


def test_newer_minor_version_is_read(bundle):
    root, manifest = bundle
    manifest["schema_version"] = SCHEMA_VERSION.split(".")[0] + ".9.0"
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert BundleReader(root).read_json("meta/options")["k"] == 0.1


def test_truncated_file_is_detected(bundle):
    root, _ = bundle
    path = root / "arrays/x.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(BundleError, match="arrays/x.npy is corrupt or truncated"):
        BundleReader(root)


def test_missing_file_is_detected(bundle):
    root, _ = bundle
    (root / "tables/t.parquet").unlink()
    with pytest.raises(BundleError, match="incomplete: tables/t.parquet is missing"):
        BundleReader(root)


def test_garbled_manifest(bundle):
    root, _ = bundle
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        BundleReader(root)


def test_unknown_entry_lists_what_exists(bundle):
    root, _ = bundle
    with pytest.raises(BundleError, match="arrays/x"):
        BundleReader(root).read_array("arrays/nope")


def test_writer_refuses_non_empty_folder_and_bad_names(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "junk").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        BundleWriter(tmp_path / "b")
    w = BundleWriter(tmp_path / "c")
    with pytest.raises(BundleError, match="relative paths"):
        w.write_json("../escape", {})
    w.write_json("a", {})
    with pytest.raises(BundleError, match="written twice"):
        w.write_json("a", {})
    with pytest.raises(BundleError, match="different lengths"):
        w.write_table("t", {"a": [1, 2], "b": [1]})
