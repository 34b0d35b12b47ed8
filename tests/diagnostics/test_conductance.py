"""Layer conductance of all layers at once, checked against captum's LayerConductance layer by layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import LayerConductance
from helpers.models import seeded, with_running_statistics
from torch import nn

from mlflow_transfer.diagnostics.conductance import CAPTUM_METHODS, alphas, layer_conductance
from mlflow_transfer.errors import DiagnosticsError

NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, size: int = 32, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _labels(n: int, seed: int = 1, classes: int = NUM_CLASSES) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


_MODELS: dict[str, nn.Module] = {}


def _alexnet32(dtype=torch.float64) -> nn.Module:
    key = f"alexnet-32/{dtype}"
    if key not in _MODELS:
        model = seeded("alexnet-32", NUM_CLASSES).to(dtype)
        # Non-trivial batch-norm statistics, so eval mode matters.
        _MODELS[key] = with_running_statistics(model, mean=(-0.5, 0.5), var=(0.5, 2.0)).eval()
    return _MODELS[key]


class _Small(nn.Module):
    """Conv → BatchNorm → ReLU → MaxPool → Linear → Tanh → Linear: several layer types to hook."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(4 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, NUM_CLASSES)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc2(torch.tanh(self.fc1(h.flatten(1))))


def _small(dtype=torch.float64) -> _Small:
    torch.manual_seed(3)
    model = _Small().to(dtype)
    model.bn.running_mean.uniform_(-0.3, 0.3)
    model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _captum(model, inputs, target, layers, *, baselines=0.0, n_steps, method, reduce,
            internal_batch_size=None) -> dict[str, np.ndarray]:
    """The reference: captum's LayerConductance, one layer at a time (then max over positions)."""
    model.eval()
    out = {}
    for name, layer in layers.items():
        attr = LayerConductance(model, layer).attribute(
            inputs, baselines, target=target, n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size).detach()
        if reduce == "max" and attr.ndim > 2:
            attr = attr.amax(dim=tuple(range(2, attr.ndim)))
        out[name] = attr.numpy()
    return out


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference relative to the largest reference magnitude (elementwise relative
    differences are meaningless for conductances near zero)."""
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def _assert_matches(ours, ref, tol=1e-5):
    assert list(ours) == list(ref)
    for name in ref:
        assert ours[name].dtype == np.float32
        assert ours[name].shape == ref[name].shape, name
        assert np.abs(ref[name]).max() > 0, name  # a test on all-zero maps could not fail
        assert _rel(ours[name], ref[name]) <= tol, (name, _rel(ours[name], ref[name]))


def _matches_captum(model, x, y, layers=None, *, n_steps, method="gausslegendre", reduce="max", batch_size=32,
                    baselines=0.0, internal_batch_size=None, tol=1e-5) -> dict[str, np.ndarray]:
    """Our conductance of ``layers`` (the model's analysis layers when None), once checked against
    captum's, layer by layer, for the same inputs, baselines and integration."""
    ours = layer_conductance(model, x, y, layers, baselines=baselines, n_steps=n_steps, method=method,
                             batch_size=batch_size, reduce=reduce)
    ref = _captum(model, x, y, model.analysis_layers if layers is None else layers, baselines=baselines,
                  n_steps=n_steps, method=method, reduce=reduce, internal_batch_size=internal_batch_size)
    _assert_matches(ours, ref, tol)
    return ours


# --------------------------------------------------------------------------- captum agreement

# (instances, batch size, integration method, reduce) of each model's comparison with captum: batches of
# one, of a part and of more than all instances, every method, both reductions.
CASES = {"alexnet-32": [(1, 32, "gausslegendre", "max"), (3, 2, "riemann_trapezoid", "max"),
                        (7, 3, "gausslegendre", "none"), (7, 4, "riemann_trapezoid", "none")],
         "layer types": [(1, 1, "gausslegendre", "none"), (3, 2, "riemann_trapezoid", "max"),
                         (7, 3, "riemann_middle", "none"), (7, 5, "gausslegendre", "max")]}


@pytest.mark.parametrize("n, batch_size, method, reduce", CASES["alexnet-32"])
def test_alexnet32_all_layers_match_captum_float64(n, batch_size, method, reduce):
    # captum batches over steps (3 at a time) where we batch over instances: same sum, other order.
    ours = _matches_captum(_alexnet32(), _images(n), _labels(n), n_steps=4, method=method, batch_size=batch_size,
                           reduce=reduce, internal_batch_size=3 * n if n > 1 else None)
    if reduce == "max":
        assert ours["conv1"].shape == (n, 48) and ours["fc6"].shape == (n, 256)
    else:
        assert ours["conv1"].shape == (n, 48, 32, 32) and ours["fc8"].shape == (n, NUM_CLASSES)


@pytest.mark.parametrize("reduce", ["max", "none"])
def test_alexnet32_float32_matches_captum(reduce):
    # float32: the layer outputs and gradients are captum's bit for bit (same per-image arithmetic),
    # only the order of the sum over steps differs; conductance of early layers is a sum of small
    # differences of large activations, so anything looser than that would not stay within 1e-5.
    _matches_captum(_alexnet32(torch.float32), _images(5, dtype=torch.float32), _labels(5), n_steps=6, batch_size=2,
                    reduce=reduce, tol=1e-5)


@pytest.mark.parametrize("n, batch_size, method, reduce", CASES["layer types"])
def test_layer_types_conv_batchnorm_pool_linear_match_captum(n, batch_size, method, reduce):
    model = _small()
    layers = {"conv": model.conv, "bn": model.bn, "pool": model.pool, "fc1": model.fc1, "fc2": model.fc2}
    ours = _matches_captum(model, _images(n, size=8), _labels(n), layers, n_steps=7, method=method,
                           batch_size=batch_size, reduce=reduce)
    assert ours["pool"].shape == ((n, 4) if reduce == "max" else (n, 4, 4, 4))


def test_int_target_and_baselines_match_captum():
    model = _small()
    layers = {"conv": model.conv, "fc1": model.fc1}
    x = _images(4, size=8)
    shared = _images(1, size=8, seed=5) * 0.1  # one baseline image for all
    per_instance = _images(4, size=8, seed=6) * 0.1
    for baselines in (0.5, shared, per_instance):
        _matches_captum(model, x, 2, layers, baselines=baselines, n_steps=5, batch_size=3)


def test_frozen_first_layer_matches_captum():
    # Frozen conv1 fed by images that need no gradient: its output is not part of any graph.
    model = copy.deepcopy(_small())
    for p in model.conv.parameters():
        p.requires_grad_(False)
    layers = {"conv": model.conv, "fc1": model.fc1}
    _matches_captum(model, _images(3, size=8), _labels(3), layers, n_steps=5, batch_size=2, reduce="none")


def test_torchvision_alexnet_with_inplace_relus_matches_captum():
    from torchvision.models import alexnet

    torch.manual_seed(0)
    model = alexnet(weights=None, num_classes=NUM_CLASSES).eval()
    assert any(getattr(m, "inplace", False) for m in model.modules())  # the case under test
    layers = {"conv1": model.features[0], "conv5": model.features[10], "fc6": model.classifier[1],
              "fc8": model.classifier[6]}
    _matches_captum(model, _images(2, size=64, dtype=torch.float32), _labels(2), layers, n_steps=3, reduce="none")


class _EditsInPlaceForBatches(nn.Module):
    """Edits the conv output in place only for batches > 1, which a one-image probe cannot see."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, NUM_CLASSES)

    def forward(self, x):
        h = self.conv(x)
        if x.shape[0] > 1:
            h.mul_(torch.sigmoid(h.detach()))  # in place, not recorded on the saved output
            h = h * 1.0
        else:
            h = h * torch.sigmoid(h.detach())
        return self.fc(torch.relu(h).flatten(1))


def test_in_place_edit_missed_by_the_probe_is_redone_with_copies():
    torch.manual_seed(2)
    model = _EditsInPlaceForBatches().double().eval()
    layers = {"conv": model.conv, "fc": model.fc}
    _matches_captum(model, _images(3, size=8), _labels(3), layers, n_steps=4, reduce="none")


# --------------------------------------------------------------------------- completeness & by hand


def test_completeness_agrees_with_captum_delta():
    # Conductance over a layer's neurons sums to F(x)[t] − F(baseline)[t] up to the path integral's
    # discretisation error; riemann_trapezoid runs the path from exactly the baseline to the input.
    model = _small()
    x, y = _images(4, size=8), _labels(4)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None])[:, 0].numpy()
    for name in ("conv", "fc1"):
        layer = getattr(model, name)
        worst = []
        for n_steps in (20, 200):
            ours = layer_conductance(model, x, y, {name: layer}, n_steps=n_steps,
                                     method="riemann_trapezoid", reduce="none")[name]
            _, captum_delta = LayerConductance(model, layer).attribute(
                x, 0.0, target=y, n_steps=n_steps, method="riemann_trapezoid",
                return_convergence_delta=True)
            delta = ours.reshape(4, -1).astype(np.float64).sum(axis=1) - gap
            np.testing.assert_allclose(delta, captum_delta.numpy(), atol=1e-6 * np.abs(gap).max())
            worst.append(np.abs(delta).max())
        # ReLU kinks and max-pool switches make the error shrink like 1/steps.
        assert worst[1] < worst[0] / 3 and worst[1] < 1e-2 * np.abs(gap).max(), worst


def test_completeness_is_exact_for_the_logit_layer():
    # The gradient of a logit with respect to the logits is one-hot, so the sum telescopes exactly.
    model = _alexnet32()
    x, y = _images(3), _labels(3)
    fc8 = model.analysis_layers["fc8"]
    ours = layer_conductance(model, x, y, {"fc8": fc8}, n_steps=3, method="riemann_trapezoid")["fc8"]
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None])[:, 0].numpy()
    np.testing.assert_allclose(ours.sum(axis=1), gap, rtol=1e-6)
    off_target = np.ones_like(ours, dtype=bool)
    off_target[np.arange(3), y.numpy()] = False
    assert (ours[off_target] == 0).all()


def _two_neuron_net() -> nn.Sequential:
    # hidden h = W1 x + b1 (the attributed layer), output F = W2 relu(h) + b2.
    lin1, lin2 = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 3.0]]))
        lin1.bias.copy_(torch.tensor([0.5, -1.2]))
        lin2.weight.copy_(torch.tensor([[2.0, -1.0], [0.0, 1.0]]))
        lin2.bias.copy_(torch.tensor([0.3, 0.0]))
    return nn.Sequential(nn.Flatten(), lin1, nn.ReLU(), lin2).double().eval()


def test_hand_worked_two_neuron_network():
    # x = (1, 2), baseline 0, class 0, riemann_trapezoid with 10 steps: alphas 0, 0.1, ..., 1.
    # h1 runs 0.5 → 5.5 (always active): 10 steps × Δh1 0.5 × W2[0,0] 2 = 10.
    # h2 = −1.2 + 5α runs −1.2 → 3.8, active for α > 0.24; the gradient is taken at the left end of
    # each step (captum's convention), so steps k = 3..9 count: 7 × 0.5 × W2[0,1] (−1) = −3.5.
    # (Right ends would give 8 steps, −4.0; the exact integral is −3.8.)
    net = _two_neuron_net()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64).reshape(1, 2, 1, 1)
    got = layer_conductance(net, x, 0, {"hidden": net[1]}, n_steps=10, method="riemann_trapezoid")
    np.testing.assert_allclose(got["hidden"], [[10.0, -3.5]], atol=1e-6)
    # Class 1 only sees h2: W2[1,1] = 1, same 7 active steps.
    got = layer_conductance(net, x, torch.tensor([1]), {"hidden": net[1]}, n_steps=10,
                            method="riemann_trapezoid")
    np.testing.assert_allclose(got["hidden"], [[0.0, 3.5]], atol=1e-6)


def test_hand_worked_two_neuron_network_trapezoid():
    # The same path as above with the trapezoid rule: each step takes the mean of the gradients at its
    # two ends. h1: 10 × 0.5 × 2 = 10 as before. h2 switches on inside step k = 2 (α 0.2 → 0.3): that
    # step counts half, ½ × 0.5 × (−1) = −0.25, then steps 3..9 fully, −3.5: −3.75 (exact: −3.8).
    net = _two_neuron_net()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64).reshape(1, 2, 1, 1)
    got = layer_conductance(net, x, 0, {"hidden": net[1]}, n_steps=10, method="trapezoid")
    np.testing.assert_allclose(got["hidden"], [[10.0, -3.75]], atol=1e-6)


@pytest.mark.parametrize("reduce", ["max", "none"])
def test_trapezoid_is_the_mean_of_captums_sums_both_ways_along_the_path(reduce):
    # Reference from captum alone: its sum on riemann_trapezoid points takes each step's gradient at the
    # left end; run from the input back to the baseline, it takes the other end (with the sign of the
    # reversed steps). The trapezoid rule is the mean of the two, per neuron.
    model, x, y = _alexnet32(), _images(3), _labels(3)
    layers = model.analysis_layers
    forward = _captum(model, x, y, layers, n_steps=6, method="riemann_trapezoid", reduce="none")
    backward = {}
    for name, layer in layers.items():
        back = LayerConductance(model, layer).attribute(torch.zeros_like(x), x, target=y, n_steps=6,
                                                        method="riemann_trapezoid")
        backward[name] = back.detach().numpy()
    ref = {}
    for name in layers:
        mean = (forward[name] - backward[name]) / 2
        ref[name] = mean.reshape(*mean.shape[:2], -1).max(-1) if reduce == "max" and mean.ndim > 2 else mean
    ours = layer_conductance(model, x, y, n_steps=6, method="trapezoid", batch_size=2, reduce=reduce)
    _assert_matches(ours, ref, tol=1e-6)  # float32 storage


def test_trapezoid_is_second_order_on_a_smooth_model():
    # planted truth: on a smooth path (tanh) the trapezoid rule's completeness error falls ~4× per
    # doubling of the steps, captum's left-end sum ~2×
    torch.manual_seed(3)
    conv, fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, NUM_CLASSES)
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), fc, nn.Tanh()).double().eval()
    x, y = _images(4, size=8), _labels(4)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None])[:, 0].numpy()

    def error(method, n):
        cond = layer_conductance(model, x, y, {"conv": conv}, n_steps=n, method=method, reduce="none")["conv"]
        return np.abs(cond.reshape(4, -1).astype(np.float64).sum(1) - gap).sum()

    trapezoid = [error("trapezoid", n) for n in (4, 8, 16)]
    left = [error("riemann_trapezoid", n) for n in (4, 8, 16)]
    assert trapezoid[0] / trapezoid[1] > 3.5 and trapezoid[1] / trapezoid[2] > 3.5, trapezoid
    assert left[1] / left[2] < 2.5, left
    assert trapezoid[2] < left[2] / 10


# --------------------------------------------------------------------------- behaviour


def test_default_layers_restores_state_and_removes_hooks():
    model = copy.deepcopy(_alexnet32())
    model.train()
    model.embedding.bn1.eval()  # a mixed state must come back as it was
    states = {n: m.training for n, m in model.named_modules()}
    x, y = _images(2), _labels(2)
    got = layer_conductance(model, x, y, n_steps=2)
    assert list(got) == list(model.analysis_layers)
    for name, layer in model.analysis_layers.items():
        units = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        assert got[name].shape == (2, units)
    assert {n: m.training for n, m in model.named_modules()} == states
    assert all(not m._forward_hooks for m in model.modules())
    # Eval mode was used: same as an explicit eval model (dropout off).
    ref = layer_conductance(model.eval(), x, y, n_steps=2)
    for name in got:
        np.testing.assert_array_equal(got[name], ref[name])


def test_state_restored_and_hooks_removed_on_error():
    model = copy.deepcopy(_alexnet32())
    model.train()
    with pytest.raises(DiagnosticsError, match="Expected target classes in"):
        layer_conductance(model, _images(2), torch.tensor([0, NUM_CLASSES]), n_steps=2)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_works_under_no_grad_and_inference_mode():
    model = _small()
    layers = {"conv": model.conv, "fc1": model.fc1}
    x, y = _images(2, size=8), _labels(2)
    ref = layer_conductance(model, x, y, layers, n_steps=3)
    with torch.no_grad():
        a = layer_conductance(model, x, y, layers, n_steps=3)
    with torch.inference_mode():
        b = layer_conductance(model, x.clone(), y.clone(), layers, n_steps=3)
    for name in ref:
        np.testing.assert_array_equal(a[name], ref[name])
        np.testing.assert_array_equal(b[name], ref[name])


def test_progress_off_a_terminal_prints_plain_lines(capsys):
    model = _small()
    layer_conductance(model, _images(5, size=8), _labels(5), {"fc1": model.fc1}, n_steps=2,
                      batch_size=2, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    # stderr is not a terminal here: one plain line per batch while there are at most 10 of them
    assert len(lines) == 3 and lines[-1].startswith("conductance (5 instances): 3/3 batch (100 %), ")
    assert "\r" not in "".join(lines) and "\x1b" not in "".join(lines)


# --------------------------------------------------------------------------- errors


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(self.fc(x.mean(dim=(2, 3))))


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3))), 0


class _UsesTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _TupleOut()

    def forward(self, x):
        return self.inner(x)[0]


class _KeepsItsOutput(nn.Linear):
    def forward(self, x):
        self.kept = super().forward(x)
        return self.kept


class _EditsItsKeptOutput(nn.Module):
    """Edits a layer's own reference to its output in place after use: no copy passed on can help."""

    def __init__(self):
        super().__init__()
        self.fc = _KeepsItsOutput(3, 3)

    def forward(self, x):
        out = self.fc(x.mean(dim=(2, 3))) * 2.0
        with torch.no_grad():
            self.fc.kept.zero_()
        return out


class _Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))[:, :, None]


def _call(**overrides):
    model = overrides.pop("model", None) or _small()
    kwargs = dict(model=model, inputs=_images(2, size=8), target=_labels(2),
                  layers={"fc1": getattr(model, "fc1", None)}, n_steps=2)
    kwargs.update(overrides)
    return layer_conductance(**kwargs)


@pytest.mark.parametrize("overrides, match", [
    (dict(inputs=_images(2, size=8)[0]),
     r"Expected inputs as a float tensor \(N, C, H, W\); got .*\(3, 8, 8\)\."),
    (dict(inputs=torch.zeros(2, 3, 8, 8, dtype=torch.long)), r"float tensor .* got torch.int64"),
    (dict(inputs=np.zeros((2, 3, 8, 8))), r"float tensor .* got ndarray"),
    (dict(inputs=_images(0, size=8), target=0), r"Expected inputs with at least one image; got N = 0\."),
    (dict(inputs=_images(2, size=8, dtype=torch.float32)),
     r"Expected inputs of the model's parameter dtype torch.float64; got torch.float32\."),
    (dict(target=torch.tensor([0.0, 1.0])),
     r"Expected target as an int or an integer tensor of shape \(2,\).*; got torch.float32"),
    (dict(target=torch.tensor([0, 1, 2])), r"integer tensor of shape \(2,\).*shape \(3,\)"),
    (dict(target=[0, 1]), r"Expected target as an int .*; got \[0, 1\]\."),
    (dict(target=True), r"Expected target as an int"),
    (dict(target=NUM_CLASSES), rf"Expected target classes in \[0, {NUM_CLASSES}\).*; got values in \[{NUM_CLASSES}, {NUM_CLASSES}\]\."),
    (dict(target=torch.tensor([-1, 0])), r"Expected target classes in .*; got values in \[-1, 0\]\."),
    (dict(n_steps=0), r"Expected n_steps as an integer >= 1; got 0\."),
    (dict(n_steps=2.0), r"Expected n_steps as an integer >= 1; got 2.0\."),
    (dict(batch_size=0), r"Expected batch_size as an integer >= 1; got 0\."),
    (dict(method="simpson"), r"Expected method \(captum's approximation methods or trapezoid\) as one of .*gausslegendre.*; got 'simpson'\."),
    (dict(reduce="mean"), r"Expected reduce as one of \('max', 'none'\); got 'mean'\."),
    (dict(baselines=torch.zeros(3, 3, 8, 8, dtype=torch.float64)),
     r"Expected baselines that broadcast to inputs \(2, 3, 8, 8\); got shape \(3, 3, 8, 8\)\."),
    (dict(baselines="black"), r"Expected baselines as a number or a tensor .*; got str\."),
    (dict(layers={}), r"Expected layers as a non-empty mapping .*; got dict with 0 entries\."),
    (dict(layers=[nn.Linear(2, 2)]), r"Expected layers as a non-empty mapping .*; got list\."),
    (dict(layers={"x": nn.Linear(64, 6)}), r"Expected layers as modules of the model; got 'x' \(Linear\), which are not"),
    (dict(layers={"x": "fc1"}), r"Expected layer 'x' as a torch.nn.Module; got str\."),
    (dict(layers={1: nn.Linear(2, 2)}), r"Expected layers keyed by layer names \(strings\); got 1\."),
    (dict(model="net"), r"Expected model as a torch.nn.Module; got str\."),
])
def test_rejects_bad_inputs(overrides, match):
    with pytest.raises(DiagnosticsError, match=match):
        _call(**overrides)


def test_rejects_bad_layers_and_models():
    small = _small()
    with pytest.raises(DiagnosticsError, match=r"Expected layers= as a dict .*; got none, and _Small has no analysis_layers\."):
        layer_conductance(small, _images(2, size=8), 0)
    with pytest.raises(DiagnosticsError, match=r"Expected layers as distinct modules; got the same module under two names"):
        _call(model=small, layers={"a": small.fc1, "b": small.fc1})
    spare = _small()
    spare.spare = nn.Linear(2, 2)  # a submodule that forward never calls
    with pytest.raises(DiagnosticsError, match=r"Expected layers on the path .*; got layer\(s\) \['spare'\], which are not called by the model's forward\."):
        layer_conductance(spare, _images(2, size=8), 0, {"spare": spare.spare, "fc1": spare.fc1})
    twice = _Twice().double()
    with pytest.raises(DiagnosticsError, match=r"Expected layer 'fc' \(Linear\) to run once per forward pass.*; got a layer that runs more than once"):
        _call(model=twice, layers={"fc": twice.fc})
    tup = _UsesTuple().double()
    with pytest.raises(DiagnosticsError, match=r"Expected layer 'inner' \(_TupleOut\) to return one tensor.*; got tuple\."):
        _call(model=tup, layers={"inner": tup.inner})
    keeps = _EditsItsKeptOutput().double()
    with pytest.raises(DiagnosticsError, match=r"Expected layer outputs that stay as computed; got layer\(s\) \['fc'\], whose output changes in place"):
        _call(model=keeps, layers={"fc": keeps.fc}, target=0)
    flat = _Flat().double()
    with pytest.raises(DiagnosticsError, match=r"Expected the model to return logits of shape \(N, classes\); got .*\[1, 3, 1\]"):
        _call(model=flat, layers={"fc": flat.fc})
    models = (small, spare, twice, tup, keeps, flat)
    assert all(not m._forward_hooks for model in models for m in model.modules())


@pytest.mark.parametrize("method", CAPTUM_METHODS)
@pytest.mark.parametrize("n", [2, 3, 7, 51, 101])
def test_alphas_are_captums(method, n):
    """The package computes captum's points itself (captum keeps them private); tests may import them."""
    from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters

    assert set(CAPTUM_METHODS) == set(SUPPORTED_METHODS)
    ours = np.asarray(alphas(method, n), dtype=np.float64)
    theirs = np.asarray(approximation_parameters(method)[1](n), dtype=np.float64)
    assert ours.shape == theirs.shape == (n,)
    np.testing.assert_array_equal(ours, theirs)
