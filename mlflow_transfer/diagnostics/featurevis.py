"""Feature visualisation by activation maximisation (§5.3.3 "feature visualization [53]"; Olah et al.,
Distill 2017): for each neuron, an image optimised from noise to excite it, shown beside its top patches.

The recipe is the usual one, written small here (torch-lucent is unmaintained, horama downloads at run
time): the image is the inverse real FFT of a learned spectrum scaled by 1/frequency (so steps move low
frequencies first and the result is not high-frequency noise), its colours mixed through a fixed
decorrelating basis and squashed by a sigmoid into the [0, 1] range the models are fed (the data
pipeline gives [0, 1] images without further normalisation). Each step the model sees the image padded
with grey and randomly jittered, scaled (0.90–1.10) and rotated (±10°) — one ``grid_sample`` — so only
features robust to small moves survive. Adam, lr 0.05. All neurons of a layer are optimised together in
chunks, one image per neuron; each image's noise and transforms come from its own seed (``seed``,
neuron), so an image does not depend on which other neurons share its chunk, which lets the cache
(:mod:`.viscache`) store images one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DiagnosticsError
from ..runtime import progress
from ..validation import check_array, check_int, check_layers_of, check_module, check_number
from . import viscache

__all__ = ["ALGORITHM", "FeatureVisuals", "visualise_layers", "visualise_neurons"]

ALGORITHM = "fvis-1"  # part of every cache key: change it when the images a setting gives change
_COLOUR_CORRELATION = 0.8  # natural images' RGB channels are strongly correlated; see _colour_basis
_LEAK = 0.1  # slope below zero of the conv objective's rectifier: a channel silent everywhere still learns
_MAX_SCALE, _MAX_ANGLE, _JITTER = 0.10, 10.0, 12 / 224  # jitter: lucid's 8 + 4 px at 224 px, as a share


class _Reached(Exception):
    """Raised by the layer hook: nothing after the visualised layer needs computing."""


@dataclass(frozen=True)
class FeatureVisuals:
    """Images of :func:`visualise_layers`.

    Attributes:
        neurons: layer → int64 (n,), the neurons in the order asked.
        images: layer → uint8 (n, S, S, 3), one optimised image per neuron.
        computed: images optimised in this call; cached: images read back from the cache.
    """

    neurons: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    computed: int
    cached: int


def _colour_basis() -> torch.Tensor:
    """sqrt of an equicorrelated RGB covariance (correlation ρ), columns scaled to unit max norm: the
    parameters live in decorrelated colour space, so a step moves luminance about as much as hue."""
    rho = _COLOUR_CORRELATION
    cov = torch.full((3, 3), rho, dtype=torch.float64) + (1 - rho) * torch.eye(3, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(cov)
    root = vectors @ torch.diag(values.sqrt()) @ vectors.T
    return (root / root.norm(dim=0).max()).float()


def _spectrum_scale(size: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    return 1.0 / torch.sqrt(fx ** 2 + fy ** 2).clamp(min=1.0 / size)  # 1/f, the DC term as the lowest f


def _draws(seed: int, neuron: int, size: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One neuron's initial spectrum (3, S, S//2+1, 2) and per-step transforms (steps, 4): scale, angle,
    shift x, shift y — from the neuron's own generator."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, neuron]).generate_state(1)[0]))
    spectrum = torch.randn(3, size, size // 2 + 1, 2, generator=g) * 0.01
    u = torch.rand(steps, 4, generator=g) * 2 - 1  # uniform in [-1, 1]
    return spectrum, u


def _render(spectrum: torch.Tensor, scale: torch.Tensor, basis: torch.Tensor, size: int) -> torch.Tensor:
    """Spectrum parameters (n, 3, S, S//2+1, 2) → images (n, 3, S, S) in (0, 1)."""
    image = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(size, size), norm="ortho") / 4
    return torch.sigmoid(torch.einsum("ij,njhw->nihw", basis, image))


def _transform(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Grey-padded, scaled, rotated and jittered copies of ``images`` (n, 3, S, S), same size: one affine
    ``grid_sample`` whose border mode repeats the 1-px grey pad, i.e. grey everywhere outside."""
    n, _, size, _ = images.shape
    padded = F.pad(images, (1, 1, 1, 1), value=0.5)
    scale = 1 + _MAX_SCALE * u[:, 0]
    angle = torch.deg2rad(_MAX_ANGLE * u[:, 1])
    fit = size / (size + 2)  # output covers the unpadded image at scale 1
    cos, sin = torch.cos(angle) / scale * fit, torch.sin(angle) / scale * fit
    shift = u[:, 2:] * max(1.0, _JITTER * size) * 2 / (size + 2)  # pixels → normalised coordinates
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _units(layer: nn.Module) -> int:
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.out_features
    raise DiagnosticsError(f"Expected a Conv2d or Linear layer to visualise; got {type(layer).__name__}. "
                           "Pass a layer of model.analysis_layers.")


def visualise_neurons(model: nn.Module, layer: nn.Module, neurons, *, image_size: int, steps: int = 48,
                      seed: int = 0, lr: float = 0.05, batch_size: int = 64) -> np.ndarray:
    """One image per neuron of ``layer`` that maximises it, optimised from noise on the model's device.

    The objective is a conv channel's mean activation over positions (the channel as a feature wherever
    it appears, as in Olah et al.'s "channel" objective; one position would give an image of one
    receptive field and noise around it), rectified first as the ReLU after it would (leaky, slope
    0.1): the analysis layers' conv outputs are taken before batch norm and ReLU, where a plain mean
    is linear in the image's mean colour for a first layer (an edge kernel, summing to zero, would see
    nothing); for a Linear unit, its activation (over tokens: rectified and averaged like a channel). The model is put in eval mode
    with its parameters frozen for the call; its mode, ``requires_grad`` flags and hooks are as before
    afterwards. Seeded and deterministic on CPU.

    Args:
        layer: a Conv2d or Linear module of ``model``.
        neurons: channel (conv) or unit (linear) indices, any order, repeats allowed.
        image_size: S, the side the model is fed (its data's image size).
        steps: optimisation steps; batch_size: images optimised together.

    Returns:
        uint8 (len(neurons), S, S, 3), in the order of ``neurons``.
    """
    check_module(model)
    check_layers_of(model, {"layer": layer}, name="the visualised layer")
    units = _units(layer)
    neurons = check_array(neurons, "neurons", ndim=1, layout="(n,)", kind="integer")
    bad = [int(n) for n in neurons if not 0 <= n < units]
    if bad:
        raise DiagnosticsError(f"Expected neuron indices of the layer in [0, {units}); got {bad[:10]}.")
    size = check_int(image_size, "image_size", low=8, doc="(pixels; the model's input size)")
    steps = check_int(steps, "steps", low=1)
    lr = check_number(lr, "lr", low=0.0, low_open=True)
    batch_size = check_int(batch_size, "batch_size", low=1)
    seed = check_int(seed, "seed", low=0)
    if len(neurons) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    grabbed = {}

    def grab(module, args, out):
        if isinstance(module, nn.Linear) and out.ndim > 2:
            out = out.movedim(-1, 1)  # a linear layer over tokens: units first, tokens as positions
        grabbed["out"] = out
        raise _Reached

    handle = layer.register_forward_hook(grab)
    model.eval()
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        scale, basis = _spectrum_scale(size).to(device), _colour_basis().to(device)
        chunks = [_optimise(model, grabbed, neurons[i:i + batch_size], size, steps, seed, lr, scale, basis, device)
                  for i in range(0, len(neurons), batch_size)]
    finally:
        handle.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    return np.concatenate(chunks)


def _optimise(model, grabbed, neurons, size, steps, seed, lr, scale, basis, device) -> np.ndarray:
    draws = [_draws(seed, int(n), size, steps) for n in neurons]
    spectrum = torch.stack([d[0] for d in draws]).to(device).requires_grad_(True)
    moves = torch.stack([d[1] for d in draws], 1).to(device)  # (steps, n, 4)
    index = torch.as_tensor(neurons, device=device)
    rows = torch.arange(len(neurons), device=device)
    optimiser = torch.optim.Adam([spectrum], lr=lr)
    for step in range(steps):
        optimiser.zero_grad(set_to_none=True)
        try:
            model(_transform(_render(spectrum, scale, basis, size), moves[step]))
        except _Reached:
            pass
        out = grabbed.pop("out", None)
        if out is None:
            raise DiagnosticsError("Expected the visualised layer to run in the model's forward pass; it did "
                                   "not. Pass a layer the model's forward uses.")
        picked = out[rows, index]
        # conv: rectified, then averaged over positions (see visualise_neurons)
        objective = F.leaky_relu(picked, _LEAK).flatten(1).mean(1) if picked.ndim > 1 else picked
        (-objective.sum()).backward()
        optimiser.step()
    with torch.no_grad():
        image = _render(spectrum, scale, basis, size)
    return (image * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def visualise_layers(model: nn.Module, requests: dict[str, tuple[nn.Module, list[int]]], *, image_size: int,
                     steps: int = 48, seed: int = 0, lr: float = 0.05, batch_size: int = 64,
                     cache_dir=None) -> FeatureVisuals:
    """:func:`visualise_neurons` for several layers (name → (module, neurons)), through the image cache.

    Each image is cached under a key of the model's weights, the layer name, the neuron and the
    settings (:mod:`.viscache`), so a second pair from the same source run (same weights) reuses the
    source model's images. ``cache_dir``: the cache folder (None: ``viscache.default_cache_dir()``;
    False: no cache).
    """
    root = viscache.default_cache_dir() if cache_dir is None else cache_dir
    weights = viscache.weights_digest(model) if root is not False else ""
    settings = {"algorithm": ALGORITHM, "image_size": int(image_size), "steps": int(steps), "seed": int(seed),
                "lr": float(lr), "arch": str(getattr(model, "arch", type(model).__name__))}
    shape = (int(image_size), int(image_size), 3)
    out_neurons, out_images, computed, cached = {}, {}, 0, 0
    # a line per layer: the stage takes tens of seconds on a CPU and would otherwise be silent
    for name, (layer, neurons) in progress(list(requests.items()), desc="feature visualisation", unit="layer"):
        neurons = np.array([int(n) for n in neurons], np.int64)
        keys = [viscache.key(weights, name, int(n), settings) for n in neurons] if root is not False else []
        found = [viscache.load(root, k, shape) for k in keys] if root is not False else [None] * len(neurons)
        missing = [i for i, image in enumerate(found) if image is None]
        if missing:
            fresh = visualise_neurons(model, layer, neurons[missing], image_size=image_size, steps=steps,
                                      seed=seed, lr=lr, batch_size=batch_size)
            for i, image in zip(missing, fresh):
                found[i] = image
                if root is not False:
                    viscache.store(root, keys[i], image)
        computed += len(missing)
        cached += len(neurons) - len(missing)
        out_neurons[name] = neurons
        out_images[name] = np.stack(found) if len(found) else np.zeros((0, *shape), np.uint8)
    return FeatureVisuals(out_neurons, out_images, computed, cached)

