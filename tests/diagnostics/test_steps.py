"""Adaptive integration steps (issue 12, point 4): which layers are cuts, the relative completeness
error against F(x) − F(x') computed directly and against captum's own conductance, the choice of the
smallest candidate within the tolerance (planted tolerances), and fixed n_steps bypassing the search."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from captum.attr import LayerConductance
from helpers.models import seeded, tiny_net
from torch import nn

from mlflow_transfer.diagnostics.options import CANDIDATE_STEPS, DiagnoseOptions, resolve_n_steps
from mlflow_transfer.diagnostics.steps import choose_n_steps, completeness_errors, cut_layers, steps_for
from mlflow_transfer.errors import DiagnosticsError

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n, size=8, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _chain(seed=0):
    net = tiny_net(3, seed=seed, dropout=0.0).double().eval()
    return net, dict(net.analysis_layers)


class _Residual(nn.Module):
    """conv_in → (conv_a → relu → conv_b) + skip → relu → pool → fc: conv_a and conv_b are bypassed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv_in, self.conv_a, self.conv_b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), \
            nn.Conv2d(4, 4, 3, padding=1)
        self.block_out = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv_in(x)
        h = self.block_out(self.conv_b(torch.relu(self.conv_a(h))) + h)
        return self.fc(h.mean((2, 3)))


def test_every_layer_of_a_chain_is_a_cut_and_a_residual_blocks_inner_convs_are_not():
    net, layers = _chain()
    assert cut_layers(net, layers, _images(1)) == ["conv1", "fc1", "fc2"]
    res = _Residual().double()
    named = OrderedDict((n, getattr(res, n)) for n in ("conv_in", "conv_a", "conv_b", "block_out", "fc"))
    assert cut_layers(res, named, _images(1)) == ["conv_in", "block_out", "fc"]
    r18 = seeded("resnet18", 4)
    assert cut_layers(r18, dict(r18.analysis_layers), torch.rand(1, 3, 32, 32)) == ["conv1", "fc"]


def _reference_error(model, layer, x, y, n_steps, method="gausslegendre"):
    """|Σ captum conductance − (F_c(x) − F_c(0))| pooled over instances / Σ |F_c(x) − F_c(0)|."""
    cond = LayerConductance(model, layer).attribute(x, 0.0, target=y, n_steps=n_steps, method=method)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x)))[torch.arange(len(x)), y]
    total = cond.detach().reshape(len(x), -1).sum(1)
    return float((total - delta).abs().sum() / delta.abs().sum())


def test_completeness_error_matches_captum_and_forward_differences_and_shrinks_with_steps():
    net, layers = _chain()
    x, y = _images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    errors = {n: completeness_errors(net, x, y, layers, n_steps=n, method="gausslegendre") for n in (8, 100)}
    for n, per_layer in errors.items():
        for name, layer in layers.items():
            # layer_conductance stores float32: the sums agree to its rounding, not to float64's
            assert per_layer[name] == pytest.approx(_reference_error(net, layer, x, y, n), rel=1e-4, abs=1e-7)
    for name in ("conv1", "fc1"):  # ReLU between input and output: first-order error, shrinks with n
        assert errors[100][name] < errors[8][name]
    assert max(errors[100].values()) < 0.02


def test_a_linear_path_with_trapezoid_points_is_complete_at_any_step_count():
    # planted truth: without a non-linearity the gradient is constant along the path, and the trapezoid
    # points include α = 0 and 1, so Σ conductance = F(x) − F(x') exactly (up to float32 rounding)
    torch.manual_seed(1)
    conv, fc = nn.Conv2d(3, 2, 3, padding=1), nn.Linear(2 * 8 * 8, 3)
    net = nn.Sequential(conv, nn.Flatten(), fc).double().eval()
    x, y = _images(4), torch.tensor([0, 1, 2, 1])
    for n in (1, 8):
        errors = completeness_errors(net, x, y, {"conv": conv, "fc": fc}, n_steps=n, method="riemann_trapezoid")
        assert max(errors.values()) < 1e-6  # float32 storage of the conductance
    # Gauss–Legendre points stop short of 0 and 1: the same path is then measurably incomplete
    assert min(completeness_errors(net, x, y, {"conv": conv, "fc": fc}, n_steps=1,
                                   method="gausslegendre").values()) > 1e-3
    # the trapezoid rule (the default) uses the same points as riemann_trapezoid: complete too
    assert max(completeness_errors(net, x, y, {"conv": conv, "fc": fc}, n_steps=1).values()) < 1e-6


def test_the_choice_is_the_smallest_candidate_within_the_tolerance():
    net, layers = _chain()
    x, y = _images(8), torch.arange(8) % 3
    worst = {n: max(completeness_errors(net, x, y, layers, n_steps=n).values()) for n in CANDIDATE_STEPS}
    assert worst[8] > worst[16] > worst[100]
    # a tolerance between the errors at 8 and 16 steps must pick 16 and try nothing larger
    choice = choose_n_steps(net, x, y, layers, tolerance=(worst[8] + worst[16]) / 2)
    assert (choice.n_steps, choice.met, list(choice.candidates)) == (16, True, [8, 16])
    assert choice.completeness_error == pytest.approx(worst[16])
    assert choice.layers == ("conv1", "fc1", "fc2") and choice.probe_size == 8
    assert choose_n_steps(net, x, y, layers, tolerance=worst[8] * 1.01).n_steps == 8
    # below every candidate's error: the largest, not met, and a note saying so
    low = choose_n_steps(net, x, y, layers, tolerance=worst[100] / 2)
    assert (low.n_steps, low.met, list(low.candidates)) == (100, False, list(CANDIDATE_STEPS))
    assert "no candidate met the tolerance" in low.note and "n_steps 100" in low.note
    record = low.record()
    assert record["candidates"]["100"] == pytest.approx(worst[100]) and record["mode"] == "auto"


def test_fixed_n_steps_bypass_the_search_and_auto_draws_a_seeded_probe_of_target_rows(monkeypatch):
    net, layers = _chain()
    images = _images(40)
    labels, domain = np.arange(40) % 3, np.repeat([0, 1], 20).astype(np.int8)
    from mlflow_transfer.diagnostics import steps as steps_module

    def refuse(*a, **k):
        raise AssertionError("searched although n_steps was fixed")

    monkeypatch.setattr(steps_module, "choose_n_steps", refuse)
    fixed = steps_for(net, images, labels, domain, layers, DiagnoseOptions(n_steps=50))
    assert (fixed.n_steps, fixed.mode, fixed.candidates, fixed.tolerance) == (50, "fixed", {}, None)
    assert fixed.record()["completeness_error"] is None
    monkeypatch.undo()

    seen = []
    monkeypatch.setattr(steps_module, "choose_n_steps",
                        lambda model, x, y, layers, **kw: seen.append((x, y, kw)) or fixed)
    steps_for(net, images, labels, domain, layers, DiagnoseOptions(completeness_tolerance=0.05, seed=3))
    steps_for(net, images, labels, domain, layers, DiagnoseOptions(completeness_tolerance=0.05, seed=3))
    (x1, y1, kw), (x2, _, _) = seen
    assert len(x1) == 16 and torch.equal(x1, x2) and kw["tolerance"] == 0.05
    rows = [int(np.flatnonzero((images == r).all(dim=(1, 2, 3)).numpy())[0]) for r in x1]
    assert all(domain[r] == 1 for r in rows) and y1.tolist() == [int(labels[r]) for r in rows]


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (" AUTO ", "auto"), ("16", 16), (50, 50)])
def test_n_steps_parse_auto_or_a_whole_number(value, expected):
    assert resolve_n_steps(value) == expected


@pytest.mark.parametrize("value", [0, -1, "0", "ten", "1.5", 2.0, True, None, ""])
def test_bad_n_steps_say_both_forms(value):
    with pytest.raises(DiagnosticsError, match=r"Expected n_steps as 'auto'.*got .*--n-steps auto"):
        resolve_n_steps(value)
