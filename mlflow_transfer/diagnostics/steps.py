"""How many integration steps Layer Conductance needs for one model (issue 12, point 4).

Conductance satisfies completeness: over a layer that every path from the input to the output
crosses (a *cut*: any layer of a plain chain; in a ResNet only the stem and block outputs, not a
convolution inside a block, which the skip connection bypasses), the conductances of all its
neurons sum to ``F_c(x) − F_c(x')``. The finite-difference sum misses that by an amount that
shrinks with ``n_steps``, so the *relative completeness error* on a small probe batch measures how
far the approximation is from the integral:

    error(layer) = Σ_i |Σ_units cond_i − Δ_i| / Σ_i |Δ_i|,   Δ_i = F_c(x_i) − F_c(x'_i)

pooled over the probe's instances (a per-instance ratio explodes for an instance whose Δ_i is near
0), and the model's error is the largest over its cut analysis layers. :func:`choose_n_steps` takes
the smallest candidate (8, 16, 32, 50, 100) whose error is at most the tolerance, or the largest
candidate (and says so) when none is. Which layers are cuts is found, not assumed
(:func:`cut_layers`): a layer is one when detaching its output leaves the logits without any
gradient towards the input. A model without any cut analysis layer is measured on all of them
(where completeness need not hold: the error is then an upper bound, and the record says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..validation import check_int, check_number
from .conductance import layer_conductance
from .options import CANDIDATE_STEPS as CANDIDATES
from .options import DiagnoseOptions, resolve_n_steps

DEFAULT_TOLERANCE = 0.01
PROBE_SIZE = 16                   # instances of the probe batch (seeded sample of the analysed targets)

__all__ = ["CANDIDATES", "StepChoice", "choose_n_steps", "completeness_errors", "cut_layers", "steps_for"]


@dataclass(frozen=True)
class StepChoice:
    """The integration steps chosen for one model and why.

    Attributes:
        n_steps: the steps used for the model's conductance.
        completeness_error: its relative completeness error on the probe (NaN when fixed by the user).
        tolerance: the tolerance it was held to (None when fixed).
        candidates: n_steps → error for each candidate tried (in order; the search stops at the first
            that meets the tolerance).
        layers: the layers the error was measured on (the cut analysis layers).
        probe_size: instances in the probe batch.
        met: whether the chosen n_steps meets the tolerance (False: none did; the largest is used).
        mode: "auto" (searched) or "fixed" (``n_steps`` given as a number; no search).
        note: why the choice may deserve a look (empty when nothing to say).
    """

    n_steps: int
    completeness_error: float
    tolerance: float | None
    candidates: dict[int, float] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    probe_size: int = 0
    met: bool = True
    mode: str = "auto"
    note: str = ""

    def record(self) -> dict:
        """JSON-ready form for the manifest (NaN → None; candidate keys as strings)."""
        def num(v):
            return None if v is None or not np.isfinite(v) else float(v)

        return {"n_steps": self.n_steps, "completeness_error": num(self.completeness_error),
                "tolerance": self.tolerance, "candidates": {str(k): num(v) for k, v in self.candidates.items()},
                "layers": list(self.layers), "probe_size": self.probe_size, "met": self.met,
                "mode": self.mode, **({"note": self.note} if self.note else {})}


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def cut_layers(model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor) -> list[str]:
    """The names in ``layers`` that every path from the input to the logits crosses.

    For each layer, one forward pass on ``example`` (one instance is enough) with the layer's output
    replaced by a detached copy: if the logits then have no gradient towards the input, nothing
    bypasses the layer. The model's train/eval flags are restored.
    """
    x0 = example[:1].detach().to(_device(model))
    states = {m: m.training for m in model.modules()}
    cuts = []
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            for name, module in layers.items():
                handle = module.register_forward_hook(lambda mod, args, out: out.detach().clone()
                                                      if isinstance(out, torch.Tensor) else out)
                try:
                    x = x0.clone().requires_grad_(True)
                    out = model(x)
                    grad = (torch.autograd.grad(out.sum(), x, allow_unused=True)[0]
                            if out.requires_grad else None)
                finally:
                    handle.remove()
                if grad is None or not bool(grad.any()):
                    cuts.append(name)
    finally:
        for m, flag in states.items():
            m.training = flag
    return cuts


def completeness_errors(model: nn.Module, inputs: torch.Tensor, target, layers: dict[str, nn.Module], *,
                        n_steps: int, baselines: float | torch.Tensor = 0.0, method: str = DiagnoseOptions.method,
                        batch_size: int = 16) -> dict[str, float]:
    """Relative completeness error (see the module docstring) of each layer in ``layers`` at ``n_steps``.

    ``target``: an int or an integer tensor (N,), as for :func:`layer_conductance`.
    """
    cond = layer_conductance(model, inputs, target, layers, baselines=baselines, n_steps=n_steps,
                             method=method, batch_size=batch_size, reduce="none")
    delta = _output_difference(model, inputs, target, baselines)
    scale = float(np.abs(delta).sum())
    out = {}
    for name, c in cond.items():
        total = c.reshape(len(c), -1).astype(np.float64).sum(1)
        out[name] = float(np.abs(total - delta).sum() / scale) if scale > 0 else float("nan")
    return out


def _output_difference(model, inputs, target, baselines) -> np.ndarray:
    """Δ_i = F_c(x_i) − F_c(x'_i) in float64, evaluated as conductance evaluates the model (eval mode)."""
    device = _device(model)
    x = inputs.detach().to(device)
    base = baselines.detach().to(device=device, dtype=x.dtype) if torch.is_tensor(baselines) else baselines
    states = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            fx = model(x.clone())
            fb = model((torch.zeros_like(x) + base).clone())
    finally:
        for m, flag in states.items():
            m.training = flag
    rows = torch.arange(len(x), device=device)
    tgt = torch.as_tensor(target, device=device).long().expand(len(x))
    return (fx[rows, tgt] - fb[rows, tgt]).double().cpu().numpy()


def choose_n_steps(model: nn.Module, inputs: torch.Tensor, target, layers: dict[str, nn.Module], *,
                   tolerance: float = DEFAULT_TOLERANCE, candidates=CANDIDATES,
                   baselines: float | torch.Tensor = 0.0, method: str = DiagnoseOptions.method,
                   batch_size: int = 16) -> StepChoice:
    """The smallest of ``candidates`` whose completeness error on ``inputs`` (the probe) is ≤ ``tolerance``.

    Args:
        inputs: the probe batch, float (P, C, H, W) (the engine: 16 seeded analysed target instances).
        target: an int or an integer tensor (P,) — the class explained (the true labels).
        layers: name → module of the analysis layers; the error is measured on those that are cuts.
        tolerance: relative completeness error allowed (0.01 = 1 %).
        candidates: increasing n_steps to try; the search stops at the first that meets the tolerance.
    """
    check_number(tolerance, "completeness_tolerance", low=0, low_open=True)
    candidates = sorted({check_int(c, "candidate n_steps", low=1) for c in candidates})
    if not candidates:
        raise DiagnosticsError("Expected at least one candidate n_steps; got none.")
    cuts = cut_layers(model, layers, inputs)
    note = ""
    if not cuts:
        cuts = list(layers)
        note = ("no analysis layer is crossed by every path to the output, so completeness need not hold "
                "on any; the error is measured over all of them and overstates the approximation error")
    measured = {n: layers[n] for n in cuts}
    errors: dict[int, float] = {}
    for steps in candidates:
        per_layer = completeness_errors(model, inputs, target, measured, n_steps=steps, baselines=baselines,
                                        method=method, batch_size=batch_size)
        errors[steps] = max(per_layer.values())
        if errors[steps] <= tolerance:
            return StepChoice(steps, errors[steps], float(tolerance), errors, tuple(cuts), len(inputs), True,
                              note=note)
    last = candidates[-1]
    if np.isnan(errors[last]):
        why = "the probe's outputs do not change between baseline and input (F(x) = F(x')), so there is no error to measure"
    else:
        why = f"no candidate met the tolerance {tolerance:g} (error {errors[last]:.3g} at {last} steps)"
    return StepChoice(last, errors[last], float(tolerance), errors, tuple(cuts), len(inputs), False,
                      note="; ".join(p for p in (f"{why}; using the largest, n_steps {last}", note) if p))


def steps_for(model: nn.Module, images: torch.Tensor, labels: np.ndarray, domain: np.ndarray,
              layers: dict[str, nn.Module], options: DiagnoseOptions) -> StepChoice:
    """The n_steps a diagnosis uses for ``model``: fixed by ``options.n_steps``, or (``"auto"``) chosen
    on a probe of ``PROBE_SIZE`` analysed target-domain instances (all instances when there are no
    target rows) drawn with its own seeded generator, so the engine's other draws stay as they were."""
    n_steps = resolve_n_steps(options.n_steps)
    if n_steps != "auto":
        return StepChoice(n_steps, float("nan"), None, mode="fixed")
    rows = np.flatnonzero(np.asarray(domain) == 1)
    rows = rows if len(rows) else np.arange(len(labels))
    rows = np.sort(np.random.default_rng(options.seed).choice(rows, min(PROBE_SIZE, len(rows)), replace=False))
    return choose_n_steps(model, images[rows], torch.as_tensor(np.asarray(labels)[rows]), layers,
                          tolerance=options.completeness_tolerance, baselines=options.baseline,
                          method=options.method, batch_size=options.batch_size)
