"""Layer conductance of every analysis layer at once (paper §5.3.1).

Conductance (Dhamdhere et al., 2018) of hidden neuron ``j`` for input ``x``, baseline ``x'`` and
class ``c`` is the path integral ∫₀¹ ∂F_c/∂y_j · dy_j/dα dα of the model output ``F_c`` along the
straight path ``x' + α(x − x')``, where ``y_j`` is the neuron's activation. One forward and one
backward pass over the scaled inputs serve *all* requested layers (forward hooks keep each layer's
output and one ``torch.autograd.grad`` call returns the gradients for all of them), where
:class:`captum.attr.LayerConductance` needs one full pass per layer.

Two sums over the ``n_steps + 1`` evaluated points, the same evaluations for both:

- captum's methods (``"gausslegendre"``, ``"riemann_*"``) reproduce captum — same alphas
  (:func:`alphas`), same finite differences ``Σ_k (y(α_{k+1}) − y(α_k)) · ∂F_c/∂y(α_k)``, which take
  the gradient at the left end of each step (first order: the completeness error falls ~1/n_steps);
- ``"trapezoid"`` (the diagnosis default) evaluates the uniform grid with both ends of the path and
  takes the mean of the gradients at both ends of each step,
  ``Σ_k (y(α_{k+1}) − y(α_k)) · ½(∂F_c/∂y(α_k) + ∂F_c/∂y(α_{k+1}))`` — exact where the model is
  linear along a step, second order where it is smooth, and on ReLU networks about half captum's
  completeness error at equal n_steps (``benchmarks/results_paper_scale.txt``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..runtime import progress as progress_over
from ..validation import check_choice, check_int, check_layers_of, check_module

REDUCTIONS = ("max", "none")
# captum's integral approximations (captum.attr._utils.approximation_methods.SUPPORTED_METHODS).
CAPTUM_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")
METHODS = (*CAPTUM_METHODS, "trapezoid")
_STEP_LOOP_MIN = 1 << 16  # elements per step above which the step loop beats one vectorised sum

__all__ = ["CAPTUM_METHODS", "METHODS", "REDUCTIONS", "alphas", "layer_conductance"]


def alphas(method: str, n: int) -> list[float] | np.ndarray:
    """The ``n`` points in [0, 1] where ``method`` evaluates the path; captum's methods as captum computes them.

    Gauss–Legendre: numpy's nodes on [-1, 1] mapped to [0, 1] as ``0.5 · (1 + x)``; Riemann: torch's
    ``linspace`` over the rule's interval. Written out here because captum keeps them in a private
    module; tests compare them with captum's own. ``"trapezoid"``: the uniform grid with both ends.
    """
    if method == "gausslegendre":
        return 0.5 * (1 + np.polynomial.legendre.leggauss(n)[0])
    if method in ("riemann_trapezoid", "trapezoid"):
        return torch.linspace(0, 1, n).tolist()
    if method == "riemann_left":
        return torch.linspace(0, 1 - 1 / n, n).tolist()
    if method == "riemann_middle":
        return torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist()
    if method == "riemann_right":
        return torch.linspace(1 / n, 1, n).tolist()
    raise DiagnosticsError(f"Expected method as one of {METHODS} (captum's approximation methods, or "
                           f"the trapezoid rule); got {method!r}.")


def layer_conductance(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor | int,
                      layers: dict[str, nn.Module] | None = None, *, baselines: torch.Tensor | float = 0.0,
                      n_steps: int = 50, method: str = "trapezoid", batch_size: int = 32,
                      reduce: str = "max", progress: bool = False) -> dict[str, np.ndarray]:
    """Conductance of every neuron of every layer in ``layers`` towards class ``target``.

    For captum's methods the same numbers as ``captum.attr.LayerConductance(model,
    layer).attribute(inputs, baselines, target=target, n_steps=n_steps, method=method)`` run once per
    layer — the layer outputs and gradients are captum's bit for bit, only the order of the additions
    over steps differs — but all layers share one forward and one backward pass per batch, on torch's intra-op threads (all cores
    by default). The model runs in eval mode (dropout off, batch-norm running statistics); its
    per-module train/eval flags are restored and the hooks removed afterwards, even on error.

    Args:
        model: a classifier mapping float (N, C, H, W) images to logits (N, classes), e.g. a
            :class:`~mlflow_transfer.models.registry.TransferNet`.
        inputs: float tensor (N, C, H, W), same dtype as the model's parameters.
        target: the class whose logit is explained: an int for all instances, or an integer tensor
            (N,) (typically the true labels).
        layers: name → module of ``model`` whose *output* neurons are attributed; default
            ``model.analysis_layers``. Each module must run exactly once per forward pass and return
            one tensor.
        baselines: the path's start: a scalar, or a tensor broadcastable to ``inputs`` (e.g.
            (1, C, H, W) or (N, C, H, W)). Default 0 (a black image).
        n_steps: number of finite-difference steps; the layer is evaluated at ``n_steps + 1``
            points of the path.
        method: captum's integral approximation (``"gausslegendre"``, ``"riemann_left"``,
            ``"riemann_right"``, ``"riemann_middle"`` or ``"riemann_trapezoid"``), or ``"trapezoid"``
            (the trapezoid rule on the uniform grid; see the module docstring).
        batch_size: instances per forward/backward pass; each pass holds
            ``batch_size × (n_steps + 1)`` scaled images with their graph, so memory grows linearly
            with it. Results do not depend on it (beyond rounding); on a CPU small batches are
            often faster (the activations stay in cache and fewer fresh pages are allocated).
        reduce: ``"max"``: one value per unit — the channel's maximum over spatial positions of the
            per-position conductance for layers with outputs (N, C, *spatial) (as in the paper), the
            unit itself for (N, units) outputs, and for an ``nn.Linear`` over tokens (N, T, units)
            the unit's maximum over tokens (tokens are a linear layer's positions);
            ``"none"``: the layer-output-shaped conductance.
        progress: report progress over the batches on stderr (:func:`mlflow_transfer.runtime.progress`:
            a bar on a terminal, else a line per 10 %).

    Returns:
        name → float32 array, in the order of ``layers``: (N, units) for ``reduce="max"``
        (``units`` = channels for conv layers, ``out_features`` for linear layers), or
        (N, *layer output shape[1:]) for ``reduce="none"``. Units are those of the logit
        (conductance sums to about ``F_c(x) − F_c(baseline)`` over a layer's neurons).

    Raises:
        DiagnosticsError: inputs of the wrong shape or dtype, a target out of range, a module that is
            not part of ``model`` or is not called by its forward, bad ``n_steps``/``method``/
            ``baselines``/``batch_size``/``reduce``.
    """
    check_module(model)
    layers = _layers(model, layers)
    inputs = _inputs(model, inputs)
    n = inputs.shape[0]
    check_int(n_steps, "n_steps", low=1)
    check_int(batch_size, "batch_size", low=1)
    check_choice(method, "method (captum's approximation methods or trapezoid)", METHODS)
    check_choice(reduce, "reduce", REDUCTIONS)
    baselines = _baselines(baselines, inputs)
    target = _target(target, n, inputs.device)

    points = alphas(method, n_steps + 1)

    states = {m: m.training for m in model.modules()}
    probe = _Probe(layers)
    try:
        model.eval()
        probe.attach()
        # Gradients are needed even when the caller runs under no_grad or inference_mode.
        with torch.inference_mode(False):
            num_classes = probe.run(model, inputs[:1])
            _target_range(target, num_classes)
            return _conductance(model, inputs, baselines, target, probe, points, batch_size, reduce,
                                progress, trapezoid=method == "trapezoid")
    finally:
        probe.remove()
        for m, flag in states.items():
            m.training = flag


@dataclass
class _Probe:
    """Forward hooks that keep each layer's output of the current pass (and undo in-place edits)."""

    layers: "OrderedDict[str, nn.Module]"
    saved: dict[str, torch.Tensor] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    clone: set[str] = field(default_factory=set)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    handles: list = field(default_factory=list)

    def attach(self) -> None:
        for name, module in self.layers.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, args, out):
            if not isinstance(out, torch.Tensor):
                raise DiagnosticsError(f"Expected layer {name!r} ({type(module).__name__}) to return one "
                                       f"tensor (conductance needs one); got {type(out).__name__}.")
            if name in self.saved:
                raise DiagnosticsError(f"Expected layer {name!r} ({type(module).__name__}) to run once per "
                                       f"forward pass (conductance is defined for such a module); got a "
                                       f"layer that runs more than once (a shared module). Pick another layer.")
            replacement = None
            if torch.is_grad_enabled() and not out.requires_grad:
                # e.g. a frozen first layer fed by inputs that need no gradient: make the output a
                # leaf of the graph, and pass a copy on so in-place ops downstream cannot touch it.
                out = out.detach().requires_grad_()
                replacement = out.clone()
            elif name in self.clone:
                # Something downstream edits this output in place (e.g. ReLU(inplace=True)): keep the
                # original for the differences and gradients and pass a copy on, as captum does.
                replacement = out.clone()
            self.saved[name] = out
            self.versions[name] = out._version
            return replacement

        return hook

    def edited(self) -> set[str]:
        """Layers whose kept output was modified in place after its hook ran."""
        return {k for k, t in self.saved.items() if t._version != self.versions[k]}

    def run(self, model: nn.Module, x: torch.Tensor) -> int:
        """One no-grad pass on one instance: checks the layers, finds in-place edits, counts classes."""
        self.saved.clear()
        with torch.no_grad():  # not inference mode: version counters must tick
            out = model(x.clone())
        missing = [k for k in self.layers if k not in self.saved]
        if missing:
            raise DiagnosticsError(f"Expected layers on the path from the input to the logits; got "
                                   f"layer(s) {missing}, which are not called by the model's forward.")
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise DiagnosticsError(f"Expected the model to return logits of shape (N, classes); got "
                                   f"{getattr(out, 'shape', type(out).__name__)}.")
        self.clone |= self.edited()
        self.shapes = {k: tuple(t.shape[1:]) for k, t in self.saved.items()}
        self.saved.clear()
        return int(out.shape[1])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.saved.clear()


def _conductance(model, inputs, baselines, target, probe: _Probe, alphas, batch_size, reduce,
                 progress, trapezoid) -> dict[str, np.ndarray]:
    n = inputs.shape[0]
    results = {}
    tokens = {name for name, shape in probe.shapes.items()
              if isinstance(probe.layers[name], nn.Linear) and len(shape) >= 2}  # (N, T, units)
    for name, shape in probe.shapes.items():
        units = shape if reduce == "none" or len(shape) < 2 else shape[-1:] if name in tokens else shape[:1]
        results[name] = np.empty((n, *units), dtype=np.float32)
    for start in progress_over(range(0, n, batch_size), desc=f"conductance ({n} instances)", unit="batch",
                               enabled=progress):
        stop = min(start + batch_size, n)
        x = inputs[start:stop]
        base = baselines[start:stop] if torch.is_tensor(baselines) and baselines.shape[0] == n else baselines
        tgt = target if isinstance(target, int) else target[start:stop].repeat(len(alphas))
        for name, cond in _batch(model, x, base, tgt, probe, alphas, trapezoid).items():
            if reduce == "max" and cond.ndim > 2:
                cond = cond.movedim(-1, 1) if name in tokens else cond
                cond = cond.amax(dim=tuple(range(2, cond.ndim)))
            results[name][start:stop] = cond.to(torch.float32).cpu().numpy()
    return results


def _batch(model, x, baseline, target, probe: _Probe, alphas, trapezoid) -> dict[str, torch.Tensor]:
    """Conductance (B, *layer shape) of each probed layer for one batch of B instances."""
    b = x.shape[0]
    with torch.no_grad():
        # Same expression and step-major order as captum, so the scaled inputs are bit-identical.
        scaled = torch.cat([baseline + alpha * (x - baseline) for alpha in alphas], dim=0)
    with torch.enable_grad():
        while True:
            probe.saved.clear()
            logits = model(scaled)
            edited = probe.edited()
            if not edited:
                break
            if edited <= probe.clone:
                raise DiagnosticsError(f"Expected layer outputs that stay as computed; got layer(s) "
                                       f"{sorted(edited)}, whose output changes in place even when a copy "
                                       f"is passed on. Pick other layers.")
            probe.clone |= edited  # an in-place edit the one-instance probe missed: redo with copies
        # captum's target selection; the sum's gradient is its per-row gradients.
        selected = logits[:, target] if isinstance(target, int) else \
            torch.gather(logits, 1, target.reshape(-1, 1))
        names = list(probe.saved)
        grads = torch.autograd.grad(selected.sum(), [probe.saved[k] for k in names],
                                    allow_unused=True, materialize_grads=True)
    out = {}
    steps = len(alphas) - 1
    with torch.inference_mode():
        for name, grad in zip(names, grads):
            evals = probe.saved[name].detach()
            out[name] = _sum_of_steps(evals.reshape(steps + 1, b, -1), grad.reshape(steps + 1, b, -1),
                                      trapezoid)
            out[name] = out[name].reshape(b, *evals.shape[1:])
    probe.saved.clear()
    return out


def _sum_of_steps(evals: torch.Tensor, grads: torch.Tensor, trapezoid: bool = False) -> torch.Tensor:
    """Σ_k (y(α_{k+1}) − y(α_k)) · ∂F/∂y(α_k) (captum's products; only the order of the additions over
    k differs, ≈ 1 ulp), or with ``trapezoid`` the mean gradient of both ends: (steps + 1, B, L) twice → (B, L).
    """
    if evals[0].numel() < _STEP_LOOP_MIN:
        slope = (grads[:-1] + grads[1:]) * 0.5 if trapezoid else grads[:-1]
        return ((evals[1:] - evals[:-1]) * slope).sum(dim=0)
    # Step by step on (B, L) slices, so the working set stays in cache instead of streaming a
    # (steps, B, L) temporary through memory three times.
    acc = torch.zeros_like(evals[0])
    diff = torch.empty_like(evals[0])
    slope = torch.empty_like(grads[0])
    for k in range(evals.shape[0] - 1):
        torch.sub(evals[k + 1], evals[k], out=diff)
        if trapezoid:
            torch.add(grads[k], grads[k + 1], out=slope).mul_(0.5)
        acc.addcmul_(diff, slope if trapezoid else grads[k])
    return acc


def _layers(model: nn.Module, layers) -> "OrderedDict[str, nn.Module]":
    if layers is None:
        layers = getattr(model, "analysis_layers", None)
        if layers is None:
            raise DiagnosticsError(f"Expected layers= as a dict of name → module of the model; got none, and "
                                   f"{type(model).__name__} has no analysis_layers.")
    return check_layers_of(model, layers)


def _inputs(model: nn.Module, inputs) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        got = f"{inputs.dtype} tensor of shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) \
            else type(inputs).__name__
        raise DiagnosticsError(f"Expected inputs as a float tensor (N, C, H, W); got {got}.")
    if inputs.shape[0] == 0:
        raise DiagnosticsError("Expected inputs with at least one image; got N = 0.")
    param = next(model.parameters(), None)
    if param is not None:
        if param.dtype != inputs.dtype:
            raise DiagnosticsError(f"Expected inputs of the model's parameter dtype {param.dtype}; got "
                                   f"{inputs.dtype}. Cast one of them (e.g. inputs.to({param.dtype})).")
        inputs = inputs.to(param.device)
    return inputs.detach()


def _baselines(baselines, inputs: torch.Tensor):
    if isinstance(baselines, (int, float, np.floating, np.integer)) and not isinstance(baselines, bool):
        return float(baselines)
    if not isinstance(baselines, torch.Tensor):
        raise DiagnosticsError(f"Expected baselines as a number or a tensor broadcastable to inputs "
                               f"{tuple(inputs.shape)}; got {type(baselines).__name__}.")
    try:
        ok = torch.broadcast_shapes(baselines.shape, inputs.shape) == inputs.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise DiagnosticsError(f"Expected baselines that broadcast to inputs {tuple(inputs.shape)}; got shape "
                               f"{tuple(baselines.shape)}. Use a scalar, (1, C, H, W) or (N, C, H, W).")
    baselines = baselines.detach().to(device=inputs.device, dtype=inputs.dtype)
    # Per-instance baselines are sliced with their instances; anything else broadcasts to every batch.
    if baselines.ndim == 4 and baselines.shape[0] == inputs.shape[0]:
        return baselines
    return baselines.reshape((1,) * (4 - baselines.ndim) + tuple(baselines.shape))


def _target(target, n: int, device) -> int | torch.Tensor:
    if isinstance(target, torch.Tensor) and target.ndim == 0:
        target = target.item() if not target.is_floating_point() else target
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target)
    if isinstance(target, torch.Tensor) and not target.is_floating_point() and not target.is_complex() \
            and target.dtype != torch.bool and target.shape == (n,):
        return target.to(device=device, dtype=torch.long)
    got = f"{target.dtype} tensor of shape {tuple(target.shape)}" if isinstance(target, torch.Tensor) \
        else repr(target)[:100]
    raise DiagnosticsError(f"Expected target as an int or an integer tensor of shape ({n},) (one class "
                           f"per instance); got {got}.")


def _target_range(target, num_classes: int) -> None:
    low, high = (target, target) if isinstance(target, int) else (int(target.min()), int(target.max()))
    if low < 0 or high >= num_classes:
        raise DiagnosticsError(f"Expected target classes in [0, {num_classes}) (the model's {num_classes} "
                               f"logits); got values in [{low}, {high}].")
