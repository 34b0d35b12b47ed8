"""Robustness (issue 13): captum's attacks at ε = 0, accuracy against ε, the defect inheritance rate on a
planted linear case worked by hand, a student that is the teacher, the conductance shift against two
direct `layer_conductance` calls, the pair's records through the engine and the bundle, and bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from helpers.cli import invoke
from helpers.models import tiny_net, transfer_net
from torch import nn

from mlflow_transfer.bundle.io import BundleReader
from mlflow_transfer.bundle.writer import write_pair_bundle
from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from mlflow_transfer.diagnostics.predictions import ValidationSets
from mlflow_transfer.diagnostics.attacks import attack_images
from mlflow_transfer.diagnostics.robustness import conductance_shift, defect_inheritance, robustness_curves
from mlflow_transfer.diagnostics.robustness_pair import robustness_set
from mlflow_transfer.errors import DiagnosticsError

pytestmark = pytest.mark.usefixtures("one_thread")


def _task(n: int, seed: int, size: int = 8) -> tuple[torch.Tensor, np.ndarray]:
    """Two classes: a bright top-left (class 1) or bottom-right (class 0) quarter over noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.rand(n, 3, size, size, generator=g)
    y = np.arange(n) % 2
    h = size // 2
    for i in range(n):
        if y[i]:
            x[i, :, :h, :h] += 0.6
        else:
            x[i, :, h:, h:] += 0.6
    return x.clamp(0, 1), y


def _train(model: nn.Module, x: torch.Tensor, y: np.ndarray, steps: int = 150, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 0.03)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.as_tensor(y)).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """A tiny net trained to near-perfect accuracy on the task, and 40 held-out instances."""
    x, y = _task(64, seed=0)
    model = _train(tiny_net(2, seed=0, dropout=0.0), x, y)
    xv, yv = _task(40, seed=1)
    assert (model(xv).argmax(1).numpy() == yv).mean() >= 0.9  # a model worth attacking
    return model, xv, yv


# --------------------------------------------------------------------------- the attacks


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_an_attack_with_epsilon_zero_changes_nothing(trained, attack):
    model, x, y = trained
    adv = attack_images(model, x, y, attack=attack, epsilon=0.0, steps=5)
    assert torch.equal(adv, x)
    clean = float((model(x).argmax(1).numpy() == y).mean())
    curve = robustness_curves(model, x, y, epsilons=[0.0], attacks=(attack,), pgd_steps=5)
    assert curve["accuracy"][0] == pytest.approx(clean) and curve["n"][0] == len(y)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_an_attack_stays_in_the_ball_and_in_range_and_leaves_the_model_mode(trained, attack):
    model, x, y = trained
    model.train()
    try:
        adv = attack_images(model, x, y, attack=attack, epsilon=0.05, steps=5)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > 0.04  # it moved


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_the_attacks_are_captums_with_the_plain_cross_entropy_where_its_gradient_survives(attack):
    # an untrained model: no gradient component of the plain cross-entropy falls under captum's 1e-6
    from captum.robust import FGSM, PGD

    model = tiny_net(3, seed=4, dropout=0.0).eval()
    x, y = _task(12, seed=8)
    y = np.arange(12) % 3
    loss = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    t = torch.as_tensor(y)
    if attack == "fgsm":
        ref = FGSM(model, loss, lower_bound=0.0, upper_bound=1.0).perturb(x.clone(), 0.03, t)
    else:
        ref = PGD(model, loss, lower_bound=0.0, upper_bound=1.0).perturb(x.clone(), 0.03, 2.5 * 0.03 / 4, 4, t)
    got = attack_images(model, x, y, attack=attack, epsilon=0.03, steps=4)
    torch.testing.assert_close(got, ref.detach(), rtol=0, atol=1e-6)
    assert (got - x).abs().max() > 0.02


def test_adversarial_accuracy_is_non_increasing_in_epsilon(trained):
    model, x, y = trained
    eps = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
    curves = robustness_curves(model, x, y, epsilons=eps, pgd_steps=10)
    for attack in ("fgsm", "pgd"):
        rows = [i for i, (a, c) in enumerate(zip(curves["attack"], curves["class_index"])) if a == attack and c == -1]
        acc = curves["accuracy"][rows]
        assert list(curves["epsilon"][rows]) == list(eps)
        assert np.all(np.diff(acc) <= 0), (attack, acc)
        assert acc[0] >= 0.9 and acc[-1] < acc[0]  # the attack bites
    pgd = curves["accuracy"][[i for i, (a, c) in enumerate(zip(curves["attack"], curves["class_index"]))
                              if a == "pgd" and c == -1]]
    fgsm = curves["accuracy"][[i for i, (a, c) in enumerate(zip(curves["attack"], curves["class_index"]))
                               if a == "fgsm" and c == -1]]
    assert np.all(pgd <= fgsm + 1e-12)  # more steps, at least as strong here


def test_curves_per_class_count_each_class_and_a_class_the_model_does_not_know_is_nan(trained):
    model, x, y = trained
    own = np.where(y == 1, -1, y)  # the model "does not know" class 1 (labels in its own space)
    curves = robustness_curves(model, x, own, epsilons=[0.0, 0.05], attacks=("fgsm",), groups=y)
    by = {(e, c): (a, n) for e, c, a, n in zip(curves["epsilon"], curves["class_index"], curves["accuracy"],
                                                curves["n"])}
    assert by[(0.0, 1)][1] == 0 and math.isnan(by[(0.0, 1)][0])
    assert by[(0.0, 0)][1] == by[(0.0, -1)][1] == int((y == 0).sum())
    assert by[(0.0, -1)][0] == pytest.approx((model(x[y == 0]).argmax(1).numpy() == 0).mean())


# --------------------------------------------------------------------------- DIR


def _linear(threshold: float, scale: float = 20.0, size: int = 4) -> nn.Module:
    """Two classes by mean pixel value: logit1 − logit0 = 2·scale·(mean − threshold). Under an L∞ attack
    on it every pixel moves by ±ε (the input gradient has one sign), so the mean moves by exactly ε."""
    d = 3 * size * size
    fc = nn.Linear(d, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.stack([-torch.full((d,), scale / d), torch.full((d,), scale / d)]))
        fc.bias.copy_(torch.tensor([scale * threshold, -scale * threshold]))
    return transfer_net([("flatten", nn.Flatten())], [("fc", fc)], [("fc", fc)]).eval()


MEANS = np.array([0.30, 0.42, 0.47, 0.36, 0.52, 0.58, 0.65, 0.80])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_dir_by_hand_on_a_planted_linear_pair():
    # teacher: mean > 0.5 is class 1; student: mean > 0.45. ε = 0.1 moves class 0 up and class 1 down by 0.1.
    # teacher clean: all right; adversarial means .40 .52 .57 .46 | .42 .48 .55 .70 → fooled on .42 .47 | .52 .58.
    # student clean: wrong on .47 only (7 clean-correct); adversarial wrong on .52 (.42), .46 (.36) | .42 (.52).
    images = torch.tensor(MEANS, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    result = defect_inheritance(_linear(0.5), _linear(0.45), images, LABELS, LABELS, epsilon=0.1, steps=40)
    table = {c: i for i, c in enumerate(result.table["class_index"])}
    expect = {-1: (3 / 7, 7, 3, 4 / 8), 0: (2 / 3, 3, 2, 2 / 4), 1: (1 / 4, 4, 1, 2 / 4)}
    for c, (dir_, n_ok, n_inh, success) in expect.items():
        i = table[c]
        assert result.table["dir"][i] == pytest.approx(dir_)
        assert result.table["n_clean_correct"][i] == n_ok and result.table["n_inherited"][i] == n_inh
        assert result.table["teacher_success"][i] == pytest.approx(success)
    moved = result.adversarial.mean((1, 2, 3)).numpy() - MEANS
    np.testing.assert_allclose(moved, np.where(LABELS == 0, 0.1, -0.1), atol=1e-6)
    assert list(np.flatnonzero(result.inherited)) == [1, 3, 4]


def test_dir_is_nan_for_a_class_without_clean_correct_rows_and_teacher_success_for_an_unknown_class():
    images = torch.tensor(MEANS, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    teacher_labels = np.where(LABELS == 1, -1, LABELS)  # the teacher does not know class 1
    student_labels = LABELS.copy()
    result = defect_inheritance(_linear(0.5), _linear(0.9), images, teacher_labels, student_labels, epsilon=0.1)
    table = {c: i for i, c in enumerate(result.table["class_index"])}
    assert math.isnan(result.table["teacher_success"][table[1]])
    assert result.table["n_clean_correct"][table[1]] == 0 and math.isnan(result.table["dir"][table[1]])


@pytest.mark.parametrize("attack", ["output", "feature"])
def test_a_student_that_is_the_teacher_inherits_exactly_the_teachers_attack_success(trained, attack):
    model, x, y = trained
    result = defect_inheritance(model, copy.deepcopy(model), x, y, y, epsilon=0.3, steps=20, attack=attack, seed=3)
    assert np.isfinite(result.table["dir"]).all()
    np.testing.assert_array_equal(result.table["dir"], result.table["teacher_success"])
    overall = list(result.table["class_index"]).index(-1)
    assert 0 < result.table["dir"][overall]  # the attack succeeded somewhere: the equality says something


def test_the_feature_attack_moves_the_penultimate_features_and_is_seeded(trained):
    model, x, y = trained
    a = defect_inheritance(model, model, x, y, y, epsilon=0.1, steps=5, attack="feature", seed=1).adversarial
    b = defect_inheritance(model, model, x, y, y, epsilon=0.1, steps=5, attack="feature", seed=1).adversarial
    assert torch.equal(a, b) and (a - x).abs().max() > 0.05
    fc2 = model.analysis_layers["fc2"]
    grabbed = []
    handle = fc2.register_forward_pre_hook(lambda m, args: grabbed.append(args[0].detach()))
    with torch.no_grad():
        model(x), model(a)
    handle.remove()
    noise = x + 0.1 * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 1)
    with torch.no_grad():
        grabbed_noise = []
        handle = fc2.register_forward_pre_hook(lambda m, args: grabbed_noise.append(args[0].detach()))
        model(noise.clamp(0, 1))
        handle.remove()
    moved = (grabbed[1] - grabbed[0]).pow(2).sum(1).mean()
    random = (grabbed_noise[0] - grabbed[0]).pow(2).sum(1).mean()
    assert moved > 2 * random  # the attack, not just its random start, moved the features


# --------------------------------------------------------------------------- conductance shift


def test_conductance_shift_equals_two_direct_layer_conductance_calls(trained):
    model, x, y = trained
    adv = attack_images(model, x, y, attack="pgd", epsilon=0.1, steps=5)
    layers = {n: model.analysis_layers[n] for n in ("conv1", "fc1")}
    important = {"a": {"conv1": np.array([2, 0]), "fc1": np.array([5])}, "b": {"conv1": np.array([1]),
                                                                              "fc1": np.array([0, 7])}}
    rows = {"a": np.array([0, 2, 4]), "b": np.array([1, 3, 9, 11])}
    got = conductance_shift(model, x, adv, y, layers, important, rows, n_steps=8)
    target = torch.as_tensor(y)
    ref = {k: layer_conductance(model, images, target, layers, n_steps=8) for k, images in (("clean", x), ("adv", adv))}
    for c, per_layer in important.items():
        for n, neurons in per_layer.items():
            np.testing.assert_allclose(got[c][n][0], ref["clean"][n][rows[c]][:, neurons].mean(0), rtol=1e-6)
            np.testing.assert_allclose(got[c][n][1], ref["adv"][n][rows[c]][:, neurons].mean(0), rtol=1e-6)
    given = conductance_shift(model, x, adv, y, layers, important, rows, n_steps=8, clean_conductance=ref["clean"])
    assert all(np.array_equal(given[c][n][1], got[c][n][1]) for c in important for n in layers)
    assert any(not np.allclose(got[c][n][0], got[c][n][1]) for c in important for n in layers)  # it shifted


# --------------------------------------------------------------------------- the pair, through the engine


CLASSES = ("a", "b")
FAST = dict(n_steps=4, folds=3, tsne_gradient="bh", weight_max_instances=4, patches=1, feature_vis_steps=0,
            stability_resamples=10, robustness_pgd_steps=3, dir_pgd_steps=10, dir_epsilon=0.3,
            robustness_epsilons=(0.0, 0.1, 0.3), robustness_examples=3)


@pytest.fixture(scope="module")
def pair_bundle(tmp_path_factory, trained):
    """A trained teacher, its fine-tuned student, 48 analysed instances and a 30-row target validation set."""
    teacher = trained[0]
    xs, ys = _task(24, seed=5)
    xt, yt = _task(24, seed=6)
    xt = (0.8 * xt + 0.1).clamp(0, 1)  # the target domain: lower contrast
    student = _train(copy.deepcopy(teacher), xt, yt, steps=20, seed=1)
    idx = np.arange(48)
    inst = Instances(torch.cat([xs, xt]), np.concatenate([ys, yt]), (idx >= 24).astype(np.int8),
                     (idx % 4 == 0).astype(np.int8), idx % 24)
    xv, yv = _task(30, seed=7)
    validation = ValidationSets(target=torch.utils.data.TensorDataset((0.8 * xv + 0.1).clamp(0, 1),
                                                                      torch.as_tensor(yv)))
    diag = diagnose_pair(teacher, student, inst, CLASSES, DiagnoseOptions(**FAST), validation=validation)
    root = tmp_path_factory.mktemp("robust") / "bundle"
    write_pair_bundle(root, diag)
    return diag, BundleReader(root)


def test_the_bundle_holds_every_robustness_record_of_the_contract(pair_bundle):
    diag, reader = pair_bundle
    block = reader.manifest["robustness"]
    assert set(block) >= {"epsilons", "attacks", "curve_pgd_steps", "curve_step_size", "dir_attacks", "dir_pgd_steps",
                          "dir_epsilon", "basis", "seconds"}
    assert block["epsilons"] == [0.0, 0.1, 0.3] and block["attacks"] == ["fgsm", "pgd"]
    assert block["dir_attacks"] == ["output", "feature"] and block["dir_pgd_steps"] == 10
    assert block["curve_pgd_steps"] == 3 and block["curve_step_size"] == "2.5*eps/steps"
    assert block["basis"] == "target validation set, 30 instances" and block["seconds"] > 0
    assert "ReMoS: 40" in block["note"]  # DIR ran fewer steps than ReMoS: said

    curves = reader.read_table("robustness/curves")
    assert list(curves) == ["model", "attack", "epsilon", "class_index", "accuracy", "n"]
    assert len(curves["model"]) == 2 * 2 * 3 * 3  # models × attacks × ε × (all + 2 classes)
    assert set(curves["model"]) == {"source", "target"} and set(curves["attack"]) == {"fgsm", "pgd"}
    assert curves["epsilon"].dtype == np.float64 and curves["class_index"].dtype == np.int64
    assert curves["n"].dtype == np.int64 and curves["accuracy"].dtype == np.float64
    assert ((curves["accuracy"] >= 0) & (curves["accuracy"] <= 1)).all()
    assert set(curves["n"][curves["class_index"] == -1]) == {30}

    dirs = reader.read_table("robustness/dir")
    assert list(dirs) == ["attack", "class_index", "dir", "n_clean_correct", "n_inherited", "teacher_success"]
    assert len(dirs["attack"]) == 2 * 3 and dirs["n_inherited"].dtype == np.int64
    assert (dirs["n_inherited"] <= dirs["n_clean_correct"]).all()
    ok = dirs["n_clean_correct"] > 0
    np.testing.assert_allclose(dirs["dir"][ok], dirs["n_inherited"][ok] / dirs["n_clean_correct"][ok])

    for attack in ("output", "feature"):
        i = list(zip(dirs["attack"], dirs["class_index"])).index((attack, -1))
        if dirs["n_inherited"][i] == 0:
            assert f"robustness/examples/{attack}.png" not in reader.files
            continue
        sprite = reader.read_png(f"robustness/examples/{attack}")
        table = reader.read_table(f"robustness/examples/{attack}/table")
        rows = min(3, int(dirs["n_inherited"][i]))
        assert sprite.shape == (rows * 8, 3 * 8, 3) and sprite.dtype == np.uint8
        assert list(table) == ["row", "class_index", "student_clean", "student_adversarial", "teacher_clean",
                               "teacher_adversarial"]
        assert len(table["row"]) == rows and all(v.dtype == np.int64 for v in table.values())
        assert (table["student_clean"] == table["class_index"]).all()
        assert (table["student_adversarial"] != table["class_index"]).all()
        assert ((table["row"] >= 0) & (table["row"] < 30)).all()


def test_the_apps_reader_opens_the_written_records(pair_bundle):
    # the records diagnose writes are the ones PairBundle reads (the app's tests plant their own)
    from mlflow_transfer.bundle import PairBundle

    _, reader = pair_bundle
    b = PairBundle.open(reader.root)
    record = b.robustness()
    assert record["epsilons"] == [0.0, 0.1, 0.3]
    for name in ("curves", "dir", "neurons"):
        np.testing.assert_array_equal(record[name]["class_index"],
                                      reader.read_table(f"robustness/{name}")["class_index"])
    shown = {attack: b.robustness_examples(attack) for attack in ("output", "feature")}
    for attack, found in shown.items():
        assert (found is None) == (f"robustness/examples/{attack}/table.parquet" not in reader.files)
    sprite, table = shown["output"]  # the fixture's student inherits defects: a gallery to read
    assert sprite.shape[0] == 8 * len(table["row"]) > 0


def test_the_neuron_shift_record_is_the_clean_conductance_and_the_attacked_one(pair_bundle):
    diag, reader = pair_bundle
    neurons = reader.read_table("robustness/neurons")
    assert list(neurons) == ["model", "class_index", "layer", "neuron", "clean", "adversarial", "shift", "rank"]
    np.testing.assert_allclose(neurons["shift"], neurons["adversarial"] - neurons["clean"])
    inst = diag.instances
    for m in ("source", "target"):
        for c, cls in enumerate(CLASSES):
            sel = (np.asarray(neurons["model"]) == m) & (neurons["class_index"] == c)
            expected = sum(len(v) for v in diag.important[m][cls].values())
            assert sel.sum() == expected
            assert sorted(neurons["rank"][sel]) == list(range(1, expected + 1))
            order = np.argsort(neurons["rank"][sel])
            assert np.all(np.diff(np.abs(neurons["shift"][sel][order])) <= 1e-12)  # rank 1 = largest |shift|
            rows = np.flatnonzero((inst.domain == 1) & (inst.labels == c))
            for layer, j, clean in zip(np.asarray(neurons["layer"])[sel], neurons["neuron"][sel], neurons["clean"][sel]):
                assert clean == pytest.approx(float(diag.conductance[m][layer][rows, j].astype(np.float64).mean()),
                                              rel=1e-6, abs=1e-9)
    assert np.abs(neurons["shift"]).max() > 0


def test_robustness_off_writes_no_record_and_no_manifest_block(trained, tmp_path):
    model = trained[0]
    x, y = _task(16, seed=2)
    idx = np.arange(16)
    inst = Instances(x, y, (idx >= 8).astype(np.int8), (idx % 2).astype(np.int8), idx)
    diag = diagnose_pair(model, copy.deepcopy(model), inst, CLASSES, DiagnoseOptions(**{**FAST, "robustness": False}))
    assert diag.robustness is None and "robustness" not in diag.timings
    write_pair_bundle(tmp_path / "b", diag)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "robustness" not in manifest and not any("robustness" in f["path"] for f in manifest["files"])


def test_the_robustness_set_is_a_seeded_capped_sample_of_the_whole_validation_set():
    x, y = _task(50, seed=3)
    batches = [(x[i:i + 7], torch.as_tensor(y[i:i + 7])) for i in range(0, 50, 7)]  # an iterable of batches
    a = robustness_set(ValidationSets(target=batches), None, 2, max_rows=20, seed=4)
    b = robustness_set(ValidationSets(target=torch.utils.data.TensorDataset(x, torch.as_tensor(y))), None, 2,
                       max_rows=20, seed=4)
    assert len(a.index) == 20 and np.array_equal(a.index, b.index) and np.all(np.diff(a.index) > 0)
    assert torch.equal(a.images, x[a.index]) and np.array_equal(a.labels, y[a.index])
    assert a.basis == "target validation set, 20 instances (a seeded sample of 50)"
    whole = robustness_set(ValidationSets(target=batches), None, 2, max_rows=500, seed=4)
    assert np.array_equal(whole.index, np.arange(50)) and whole.basis == "target validation set, 50 instances"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_an_epsilon_outside_zero_one_is_one_clear_error(trained, eps):
    model, x, y = trained
    with pytest.raises(DiagnosticsError, match=r"epsilon as a finite number in \[0, 1\].*8/255"):
        attack_images(model, x, y, attack="pgd", epsilon=eps)
    inst = Instances(x, y, np.ones(len(y), np.int8), np.ones(len(y), np.int8), np.arange(len(y)))
    for field in ({"dir_epsilon": eps}, {"robustness_epsilons": (0.0, eps)}):
        with pytest.raises(DiagnosticsError, match=r"in \[0, 1\]"):
            diagnose_pair(model, model, inst, CLASSES, DiagnoseOptions(**{**FAST, **field}))


def test_robustness_maybe_is_a_usage_error_naming_on_and_off():
    proc = invoke("diagnose", "--target-run-id", "0" * 32, "--robustness", "maybe")
    assert proc.returncode == 2 and "'on'" in proc.stderr and "'off'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("value, expected", [("off", False), ("on", True), ("OFF", False)])
def test_the_robustness_option_reaches_the_diagnose_options(monkeypatch, value, expected):
    import mlflow_transfer.tracking.diagnose as tracking_diagnose

    seen = {}
    monkeypatch.setattr(tracking_diagnose, "diagnose", lambda **kw: seen.setdefault("options", kw["options"]) and "r1")
    proc = invoke("diagnose", "--target-run-id", "0" * 32, "--device", "cpu", "--robustness", value)
    assert proc.returncode == 0, proc.stderr
    assert seen["options"].robustness is expected


def test_label_spaces_that_differ_give_nan_rows_for_the_class_the_teacher_does_not_know():
    # pair classes: the target's (b, d), then the source's others (a, c); the source knows a, b, c
    pair_classes = ("b", "d", "a", "c")
    teacher, student = tiny_net(3, seed=0, dropout=0.0), tiny_net(2, seed=1, dropout=0.0)
    x, _ = _task(24, seed=9)
    labels = np.arange(24) % 2  # target-domain rows only: b or d
    idx = np.arange(24)
    inst = Instances(x, labels, np.ones(24, np.int8), (idx % 2 == idx // 12).astype(np.int8), idx)
    diag = diagnose_pair(teacher, student, inst, pair_classes, DiagnoseOptions(**FAST),
                         model_classes={"source": ("a", "b", "c"), "target": ("b", "d")})
    curves, dirs = diag.robustness.curves, diag.robustness.dir
    for e in FAST["robustness_epsilons"]:
        row = {(m, a, c): (acc, n) for m, a, ep, c, acc, n in zip(curves["model"], curves["attack"], curves["epsilon"],
                                                                   curves["class_index"], curves["accuracy"], curves["n"])
               if ep == e}
        for attack in ("fgsm", "pgd"):
            acc, n = row[("source", attack, 1)]
            assert n == 0 and math.isnan(acc)  # the source does not know d
            # the source's all-class row rests on the rows of the class it knows, as many as the target's of b
            assert row[("source", attack, -1)][1] == row[("source", attack, 0)][1] == row[("target", attack, 0)][1]
            assert row[("target", attack, -1)][1] == row[("target", attack, 0)][1] + row[("target", attack, 1)][1]
    for i, (attack, c) in enumerate(zip(dirs["attack"], dirs["class_index"])):
        if c == 1:
            assert math.isnan(dirs["teacher_success"][i])
    assert diag.robustness.info["basis"].startswith("analysed target validation instances")
