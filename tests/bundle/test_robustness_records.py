"""Issue 13's robustness records read back by the torch-free `PairBundle` readers: the planted values of
``helpers.bundles.add_robustness_records`` round-trip; a bundle without the section reads None; a
malformed manifest block, a missing table or column, a bad attack name are one clear error."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from helpers.bundles import (
    ROBUSTNESS_EPSILONS,
    add_robustness_records,
    planted_accuracy,
    planted_dir,
    without_records,
)

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import BundleError


@pytest.fixture()
def copy(tiny_bundle, tmp_path):
    """A copy of the session's tiny bundle (no robustness section) to add records to."""
    return shutil.copytree(tiny_bundle, tmp_path / "b")


@pytest.fixture()
def robust(copy):
    return add_robustness_records(copy)


def test_a_bundle_without_the_section_reads_none(tiny_bundle):
    b = PairBundle.open(tiny_bundle)
    assert b.robustness() is None
    assert b.robustness_examples("output") is None and b.robustness_examples("feature") is None


def test_planted_records_round_trip(robust):
    found = PairBundle.open(robust).robustness()
    assert found["epsilons"] == pytest.approx(list(ROBUSTNESS_EPSILONS)) and found["dir_pgd_steps"] == 40
    assert found["basis"] == "target validation set, 10 instances"
    curves = found["curves"]
    assert len(curves["model"]) == 2 * 2 * 5 * 4
    eps_index = {round(e, 9): i for i, e in enumerate(ROBUSTNESS_EPSILONS)}
    for m, a, e, c, acc in zip(curves["model"], curves["attack"], curves["epsilon"], curves["class_index"],
                               curves["accuracy"]):
        want = planted_accuracy(m, a, eps_index[round(float(e), 9)], int(c))
        assert (math.isnan(want) and math.isnan(acc)) or acc == pytest.approx(want)
    d = found["dir"]
    for a, c, v in zip(d["attack"], d["class_index"], d["dir"]):
        want = planted_dir(a, int(c))
        assert (math.isnan(want) and math.isnan(v)) or v == pytest.approx(want)
    n = found["neurons"]
    assert set(n) >= {"model", "class_index", "layer", "neuron", "clean", "adversarial", "shift", "rank"}
    assert np.allclose(np.asarray(n["adversarial"]) - np.asarray(n["clean"]), n["shift"])


def test_examples_round_trip_as_sprite_and_table(robust):
    b = PairBundle.open(robust)
    sprite, table = b.robustness_examples("output")
    assert sprite.shape == (64, 96, 3) and sprite.dtype == np.uint8
    assert list(table["row"]) == [5, 7] and list(table["teacher_adversarial"]) == [2, -1]
    assert (sprite[32:64, 64:96, 2] == 107).all() and (sprite[0:32, 32:64, 1] == 105).all()
    assert b.robustness_examples("feature") is None  # that attack has no examples in this bundle


def test_a_bad_attack_name_is_a_clear_error(robust):
    with pytest.raises(BundleError, match=r"Expected a robustness attack in \['output', 'feature'\]"):
        PairBundle.open(robust).robustness_examples("fgsm")


@pytest.mark.parametrize("block", [
    "on", ["epsilons"], {"epsilons": [0, 0.1]},
    {"epsilons": [0, 2], "attacks": ["fgsm"], "curve_pgd_steps": 10, "curve_step_size": "x",
     "dir_attacks": ["output"], "dir_pgd_steps": 40, "dir_epsilon": 0.03, "basis": "b", "seconds": 1.0},
    {"epsilons": [0], "attacks": ["fgsm"], "curve_pgd_steps": "10", "curve_step_size": "x",
     "dir_attacks": ["output"], "dir_pgd_steps": 40, "dir_epsilon": 0.03, "basis": "b", "seconds": 1.0},
    {"epsilons": [0], "attacks": [1], "curve_pgd_steps": 10, "curve_step_size": "x",
     "dir_attacks": ["output"], "dir_pgd_steps": 40, "dir_epsilon": 0.03, "basis": "b", "seconds": 1.0},
])
def test_a_malformed_manifest_block_is_the_corrupt_error(copy, block):
    b = PairBundle.open(add_robustness_records(copy, block=block))
    with pytest.raises(BundleError, match=r"Expected manifest field 'robustness.*The bundle is damaged"):
        b.robustness()


def test_a_missing_table_is_the_corrupt_error(robust):
    without_records(robust, "robustness/dir")
    with pytest.raises(BundleError, match=r"Expected table robustness/dir .*got no such table"):
        PairBundle.open(robust).robustness()


def test_an_examples_sprite_of_the_wrong_shape_is_the_corrupt_error(robust):
    """A sprite whose height is not a whole number of the table's rows: refused, not cut wrongly."""
    import hashlib

    from PIL import Image

    path = robust / "robustness/examples/output.png"

    Image.fromarray(np.zeros((63, 96, 3), np.uint8)).save(path)
    manifest = json.loads((robust / "manifest.json").read_text())
    for e in manifest["files"]:
        if e["path"] == "robustness/examples/output.png":
            e["bytes"], e["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (robust / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="as an RGB sprite of 2 rows of 3 tiles"):
        PairBundle.open(robust).robustness_examples("output")


def test_an_empty_examples_table_without_a_sprite_reads_as_no_examples(robust):
    """No inherited defect: the writer cannot store an empty PNG, so the table stands alone."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = robust / "robustness/examples/feature/table.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({c: np.zeros(0, np.int64) for c in (
        "row", "class_index", "student_clean", "student_adversarial", "teacher_clean", "teacher_adversarial")}), path)
    manifest = json.loads((robust / "manifest.json").read_text())
    manifest["files"].append({"path": "robustness/examples/feature/table.parquet", "kind": "table",
                              "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    (robust / "manifest.json").write_text(json.dumps(manifest))
    sprite, table = PairBundle.open(robust).robustness_examples("feature")
    assert sprite.shape == (0, 0, 3) and len(table["row"]) == 0
