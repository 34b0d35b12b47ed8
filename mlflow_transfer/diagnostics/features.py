"""Neuron features for the detail panel (§5.3.3): each neuron's top activating image patches.

For a conv channel the patch is the receptive field of the position where the channel peaks,
computed from the kernel/stride/padding chain of the embedding (conv and pooling layers of a
``Sequential``); for a linear unit, and for architectures whose chain is not a plain sequence
(ResNet blocks), the whole image is the receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError


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
    raise DiagnosticsError("layer is not part of the model's embedding chain")


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
    if images.ndim != 4 or len(images) == 0:
        raise DiagnosticsError(f"images must be a non-empty (N, 3, H, W) tensor, got {tuple(images.shape)}")
    neurons = [int(n) for n in neurons]
    units = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    if units is None or any(n < 0 or n >= units for n in neurons):
        raise DiagnosticsError(f"neuron indices must be in [0, {units}) for this layer, got {neurons}")
    peaks, where = [], []
    grabbed = {}
    handle = layer.register_forward_hook(lambda m, i, o: grabbed.__setitem__("out", o))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(images), batch_size):
                model(images[s:s + batch_size])
                out = grabbed["out"][:, neurons]
                if out.ndim == 4:
                    flat = out.flatten(2)
                    value, pos = flat.max(2)
                    peaks.append(value)
                    where.append(torch.stack([pos // out.shape[3], pos % out.shape[3]], -1))
                else:
                    peaks.append(out)
                    where.append(torch.zeros(*out.shape, 2, dtype=torch.long))
    finally:
        handle.remove()
        model.train(was_training)
    peak, pos = torch.cat(peaks).numpy(), torch.cat(where).numpy()
    rf = receptive_field(model, layer)
    h, w = images.shape[2:]
    result = {}
    for col, neuron in enumerate(neurons):
        order = np.argsort(-peak[:, col], kind="stable")[:k]
        boxes = []
        for idx in order:
            if rf is None:
                boxes.append((0, 0, h, w))
            else:
                size, jump, start = rf
                i, j = pos[idx, col]
                top, left = start + i * jump, start + j * jump
                boxes.append((max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)))
        patches = np.stack([_crop(images[idx], box, patch_size) for idx, box in zip(order, boxes)])
        result[neuron] = NeuronPatches(order.astype(np.int64), peak[order, col].astype(np.float32),
                                       np.asarray(boxes, dtype=np.int64), patches)
    return result


def _crop(image: torch.Tensor, box, size: int) -> np.ndarray:
    from PIL import Image

    top, left, bottom, right = box
    pixels = (image[:, top:bottom, left:right].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.NEAREST))
