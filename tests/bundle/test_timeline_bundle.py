"""The timeline bundle (issue 14): what is written is read back, and a damaged one is one clear error."""

import json

import numpy as np
import pytest
from helpers.timeline import planted_coords, planted_grid, planted_metric, write_tiny_timeline

from mlflow_transfer.bundle import SCHEMA_VERSION, PairBundle, TimelineBundle
from mlflow_transfer.bundle.io import MANIFEST, _sha256
from mlflow_transfer.bundle.timeline import METRICS
from mlflow_transfer.errors import BundleError
from mlflow_transfer.regions import region_image


@pytest.fixture(scope="module")
def timeline(tmp_path_factory):
    return write_tiny_timeline(tmp_path_factory.mktemp("tl") / "timetravel")


def test_round_trip(timeline):
    tl = TimelineBundle.open(timeline)
    assert tl.reader.manifest["schema_version"] == SCHEMA_VERSION
    assert tl.classes == ["a", "b", "c"] and tl.transfer_position == 3 and tl.n_positions == 5
    epochs = tl.epochs()
    assert list(epochs["phase"]) == ["source"] * 3 + ["target"] * 2 and list(epochs["epoch"]) == [1, 2, 3, 1, 2]
    n = tl.meta["n_points"]
    assert n == 24 and list(tl.points()["label"][:4]) == [0, 1, 2, 0]
    for p in range(5):
        f = tl.frame(p)
        np.testing.assert_array_equal(f.coords, planted_coords(p, n))
        np.testing.assert_array_equal(f.prediction, (np.arange(n) + p) % 3)
        grid_class, gap = planted_grid(p, 40, 3)
        np.testing.assert_array_equal(f.grid_class, grid_class)
        np.testing.assert_array_equal(tl.region(p), region_image(grid_class, gap))
        assert f.extent == pytest.approx((-1.1 * (1 + p), 1.1 * (1 + p), -1.1 * (1 + p), 1.1 * (1 + p)))
        for m in METRICS:
            np.testing.assert_equal(f.metrics[m], planted_metric(m, p))
    # the planted boundary moves: the region images of two positions differ
    assert (tl.region(0) != tl.region(4)).any()
    traj = tl.trajectories([0, 5])
    assert traj.shape == (5, 2, 2)
    np.testing.assert_array_equal(traj[:, 1], np.stack([planted_coords(p, n)[5] for p in range(5)]))


def test_positions_and_point_indices_are_checked(timeline):
    tl = TimelineBundle.open(timeline)
    for bad in (-1, 5, True, "1", 1.0):
        with pytest.raises(BundleError, match=r"timeline position in \[0, 5\)"):
            tl.frame(bad)
    with pytest.raises(BundleError, match=r"point indices in \[0, 24\)"):
        tl.trajectories([0, 24])


def _rewrite(root, name, mutate):
    """Replace bundle file ``name`` by ``mutate(bytes)`` and fix its manifest entry (a forged, consistent bundle)."""
    path = root / name
    path.write_bytes(mutate(path.read_bytes()))
    manifest = json.loads((root / MANIFEST).read_text())
    for e in manifest["files"]:
        if e["path"] == name:
            e["bytes"], e["sha256"] = path.stat().st_size, _sha256(path)
    (root / MANIFEST).write_text(json.dumps(manifest))


def _copy(timeline, tmp_path):
    import shutil

    return shutil.copytree(timeline, tmp_path / "copy")


def test_forged_arrays_are_refused(timeline, tmp_path):
    root = _copy(timeline, tmp_path)
    bad = np.full((24, 2), np.nan, np.float32)
    import io

    buf = io.BytesIO()
    np.save(buf, bad)
    _rewrite(root, "frames/001/coords.npy", lambda _: buf.getvalue())
    tl = TimelineBundle.open(root)
    tl.frame(0)  # the others still read
    with pytest.raises(BundleError, match="finite coordinates in frames/001/coords"):
        tl.frame(1)


def test_class_index_out_of_range_is_refused(timeline, tmp_path):
    root = _copy(timeline, tmp_path)
    import io

    buf = io.BytesIO()
    np.save(buf, np.full(24, 7, np.int16))
    _rewrite(root, "frames/002/prediction.npy", lambda _: buf.getvalue())
    with pytest.raises(BundleError, match=r"class indices in \[0, 3\)"):
        TimelineBundle.open(root).frame(2)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(kind="pair"), "not a timeline bundle"),
    (lambda m: m["timeline"].update(transfer_position=9), r"transfer_position in \[0, 5\)"),
    (lambda m: m["timeline"].update(classes="abc"), "manifest field 'timeline'"),
    (lambda m: m.pop("timeline"), "manifest field 'timeline'"),
])
def test_malformed_manifest_block(timeline, tmp_path, change, message):
    root = _copy(timeline, tmp_path)
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message) as info:
        TimelineBundle.open(root)
    assert "\n" not in str(info.value)


def test_incomplete_timeline_names_its_own_fix(timeline, tmp_path):
    root = _copy(timeline, tmp_path)
    (root / MANIFEST).unlink()
    with pytest.raises(BundleError, match="not a complete timeline bundle.*mlflow-transfer timetravel"):
        TimelineBundle.open(root)


def test_a_timeline_is_not_a_pair_bundle(timeline):
    with pytest.raises(BundleError, match="not a pair-diagnostics bundle"):
        PairBundle.open(timeline)
