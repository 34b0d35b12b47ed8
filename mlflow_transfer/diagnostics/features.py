"""Neuron features for the detail panel (§5.3.3): each neuron's top activating image patches.

For a conv channel the patch is the receptive field of the position where the channel peaks
(zero padding included, shown black),
computed from the kernel/stride/padding chain of the embedding (conv and pooling layers of a
``Sequential``; for an adapted model, the same chain read from its export graph); for a linear unit, and for architectures whose chain is not a plain sequence
(ResNet blocks), the whole image is the receptive field. A linear layer over tokens (a transformer's)
ranks images by the unit's maximum over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ._hooks import run_with_hooks


@dataclass(frozen=True)
class NeuronPatches:
    """Top activating inputs of one neuron.

    Attributes:
        indices: int64 (k,), rows of the images given, strongest first.
        values: float32 (k,), the neuron's activation there (max over positions for conv).
        boxes: int64 (k, 4), receptive-field box (top, left, bottom, right) in input pixels, clipped.
        patches: uint8 (k, P, P, 3), the boxes' pixels resized to P×P.
    """

    indices: np.ndarray
    values: np.ndarray
    boxes: np.ndarray
    patches: np.ndarray


def receptive_field(model: nn.Module, layer: nn.Module) -> tuple[int, int, int] | None:
    """(size, jump, start) of ``layer``'s output units in input pixels, or None for "whole image".

    Unit (i, j) sees rows ``start + i·jump … start + i·jump + size − 1`` (same for columns).
    """
    fields = getattr(model, "receptive_fields", None)
    if fields is not None:  # an adapted model: read from its graph (models.graph.receptive_fields)
        return next((fields.get(n) for n, m in model.analysis_layers.items() if m is layer), None)
    size, jump, start = 1, 1, 0
    chain = model.embedding if isinstance(getattr(model, "embedding", None), nn.Sequential) else None
    if chain is None or isinstance(layer, nn.Linear):
        return None
    for module in chain.modules():
        if module is chain or isinstance(module, nn.Sequential):
            continue
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = (_first(getattr(module, a)) for a in ("kernel_size", "stride", "padding"))
            d = _first(getattr(module, "dilation", 1))
            size += ((k - 1) * d) * jump
            start -= p * jump
            jump *= s
            if module is layer:
                return size, jump, start
        elif isinstance(module, (nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Dropout2d, nn.Identity)):
            continue
        else:
            return None  # a block we do not model: fall back to the whole image
    raise DiagnosticsError(f"Expected a layer of the model's embedding chain; got {type(layer).__name__}, "
                           "which is not part of it.")


def _first(v) -> int:
    return int(v[0] if isinstance(v, tuple) else v)


def top_patches(model: nn.Module, layer: nn.Module, images: torch.Tensor, neurons: list[int] | np.ndarray, *,
                k: int = 9, patch_size: int = 32, batch_size: int = 256) -> dict[int, NeuronPatches]:
    """The ``k`` images (and their receptive-field patches) that activate each of ``neurons`` most.

    Args:
        layer: a Conv2d or Linear module of ``model``; its output is the neuron activation.
        images: float (N, 3, H, W) in [0, 1].
        neurons: channel (conv) or unit (linear) indices.
    """
    return top_patches_many(model, {"layer": (layer, neurons)}, images, k=k, patch_size=patch_size,
                            batch_size=batch_size)["layer"]


def top_patches_many(model: nn.Module, requests: dict[str, tuple[nn.Module, list[int]]], images: torch.Tensor,
                     *, k: int = 9, patch_size: int = 32, batch_size: int = 256) -> dict[str, dict[int, NeuronPatches]]:
    """:func:`top_patches` for several layers (name → (module, neurons)) in one pass over ``images``."""
    if images.ndim != 4 or len(images) == 0:
        raise DiagnosticsError(f"Expected images as a non-empty (N, 3, H, W) tensor; got shape "
                               f"{tuple(images.shape)}.")
    wanted = {}
    for name, (layer, neurons) in requests.items():
        neurons = [int(n) for n in neurons]
        units = getattr(layer, "out_channels", getattr(layer, "out_features", None))
        if units is None or any(n < 0 or n >= units for n in neurons):
            raise DiagnosticsError(f"Expected neuron indices of layer {name} in [0, {units}); got {neurons}.")
        wanted[name] = (layer, neurons)
    peaks = {n: [] for n in wanted}
    where = {n: [] for n in wanted}

    def hook(name, neurons):
        def grab(module, args, out):
            if isinstance(module, nn.Linear) and out.ndim > 2:  # over tokens: the unit's max over them
                out = out.movedim(-1, 1).flatten(2).amax(2)
            out = out[:, neurons]
            if out.ndim == 4:
                value, pos = out.flatten(2).max(2)
                peaks[name].append(value)
                where[name].append(torch.stack([pos // out.shape[3], pos % out.shape[3]], -1))
            else:
                peaks[name].append(out)
        return grab

    run_with_hooks(model, images, {layer: hook(n, ns) for n, (layer, ns) in wanted.items()}, batch_size)
    return {name: _patches(model, layer, neurons, torch.cat(peaks[name]).cpu().numpy(),
                           torch.cat(where[name]).cpu().numpy() if where[name] else None, images, k, patch_size)
            for name, (layer, neurons) in wanted.items()}


def _patches(model, layer, neurons, peak, pos, images, k, patch_size) -> dict[int, NeuronPatches]:
    rf = receptive_field(model, layer)
    h, w = images.shape[2:]
    size = max(h, w) if rf is None else rf[0]
    # Pad once so every receptive field is a fixed-size window (zero padding shows as black, as the
    # network saw it); then crop all windows and resize them in one interpolate call.
    pad = 0 if rf is None else size
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
    result = {}
    for col, neuron in enumerate(neurons):
        order = np.argsort(-peak[:, col], kind="stable")[:k]
        if rf is None:
            boxes = np.tile([0, 0, h, w], (len(order), 1))
            windows = images[torch.as_tensor(order)]
        else:
            _, jump, start = rf
            tops = start + pos[order, col, 0] * jump
            lefts = start + pos[order, col, 1] * jump
            boxes = np.stack([np.maximum(tops, 0), np.maximum(lefts, 0),
                              np.minimum(tops + size, h), np.minimum(lefts + size, w)], 1)
            windows = torch.stack([padded[i, :, t + pad:t + pad + size, l + pad:l + pad + size]
                                   for i, t, l in zip(order, tops, lefts)])
        small = torch.nn.functional.interpolate(windows, size=(patch_size, patch_size), mode="nearest")
        patches = (small.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        result[neuron] = NeuronPatches(order.astype(np.int64), peak[order, col].astype(np.float32),
                                       np.asarray(boxes, dtype=np.int64), patches)
    return result
