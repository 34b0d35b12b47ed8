"""ReMoS slicing (Zhang et al., ICSE 2022; issue 13): zero the source weights the target data does not use
before fine-tuning, so fewer of the teacher's defects are inherited.

Read from the authors' code (PKU-ASAL/ReMoS_artifact, ``CV_adv/nc_prune``: ``my_profile.py``,
``coverage/my_neuron_coverage.py``, ``nc_weight_rank_pruner.py``):

- *Profile* (`channel_coverage`): the teacher runs on the student's training set. For every
  ``Conv2d`` layer, each sample's layer **output** and layer **input** are min-max scaled to [0, 1]
  over that sample's whole tensor (all channels and positions); a channel is *covered* on that sample
  when its spatial mean is > 0.5. Per layer we count, for each input channel and each output channel,
  the samples that cover it. (A sample whose tensor is constant covers nothing: ReMoS divides by zero
  there, and NaN > 0.5 is false.)
- *Score* (`slice_scores`): a weight ``W[o, i, h, w]`` of a conv layer gets the channel score
  ``inputs[i] + outputs[o]`` (its kernel's input and output coverage). Over **all** conv weights of the
  model together, ``score = rank(channel score) − rank(|W|)``, both ranks ascending in [0, N−1]. So the
  lowest scores are weights of rarely covered channels that are *large*: important to the teacher,
  unused by the target task — where ReMoS says defects travel. ReMoS gives a kernel's h·w weights the
  first position of their block in the sorted channel list and breaks ties by loop order; we rank each
  weight with the average rank of its ties (``scipy.stats.rankdata(..., "average")``), which is the same
  ordering without the dependence on loop order (ties are common: many channels share a count).
- *Slice* (`slice_mask`): the ``int(ratio · N)`` lowest-scored weights over the whole model (one global
  threshold, as ReMoS; not per layer), ties broken by position (layers in order, then C order). ReMoS's
  ``thre = sorted[int(N · ratio)]; keep = score > thre`` removes one weight more plus ties; we remove
  exactly ``int(ratio · N)``.
- `apply_slice` zeroes them in place, once; fine-tuning then proceeds normally (the weights may grow
  back, as in ReMoS, which slices at the start of training only).

Masks are ``True`` where a weight is removed, keyed by the conv layer's module path
(``model.named_modules()``), the layout `tracking.runs` logs as ``slicing/mask.npz``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, NamedTuple

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import RecipeError
from ..validation import check_number

__all__ = ["LayerCoverage", "apply_slice", "channel_coverage", "check_ratio", "conv_layers", "slice_mask", "slice_model",
           "slice_scores"]

THRESHOLD = 0.5  # ReMoS's neuron-coverage threshold on the min-max scaled spatial mean


class LayerCoverage(NamedTuple):
    """How often each channel of one conv layer is covered.

    Attributes:
        inputs: (C_in,) int64, samples on which each input channel of the layer is covered.
        outputs: (C_out,) int64, samples on which each output channel is covered.
        n_samples: samples profiled.
    """

    inputs: np.ndarray
    outputs: np.ndarray
    n_samples: int


def conv_layers(model: nn.Module) -> "OrderedDict[str, nn.Conv2d]":
    """Every ``Conv2d`` of ``model`` by module path, in registration order (shortcut convs included:
    ReMoS slices every conv weight).

    Raises:
        RecipeError: ``model`` has no ``Conv2d`` (slicing has nothing to act on).
    """
    layers = OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if not layers:
        raise RecipeError(f"Expected a model with Conv2d layers for `target.method: slice` (ReMoS slices conv "
                          f"weights); got {type(model).__name__} with none. Use `target.method: finetune` "
                          "for this model.")
    return layers


def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
        return
    loader = images if isinstance(images, DataLoader) else DataLoader(images, batch_size=batch_size)
    for batch in loader:
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


def _covered(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, C) bool: each sample min-max scaled over its whole tensor, then the channel's
    spatial mean > 0.5. A constant sample (max == min) covers nothing."""
    flat = t.detach().flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = (high - low).view(-1, 1, 1, 1)
    scaled = (t - low.view(-1, 1, 1, 1)) / torch.where(span > 0, span, torch.ones_like(span))
    return (scaled.mean(dim=(2, 3)) > THRESHOLD) & (span.view(-1, 1) > 0)


@torch.no_grad()
def channel_coverage(model: nn.Module, images: Dataset | DataLoader | torch.Tensor,
                     layers: "OrderedDict[str, nn.Conv2d] | None" = None, *,
                     batch_size: int = 128) -> "OrderedDict[str, LayerCoverage]":
    """Profile ``model`` on ``images``: per conv layer, how many samples cover each input and output channel.

    Args:
        model: the teacher; put in eval mode for the pass and restored to its mode after.
        images: a dataset of ``(image, label)`` pairs, a loader of such batches, or an (N, C, H, W) tensor.
        layers: name → ``Conv2d`` of ``model`` (default `conv_layers`).
        batch_size: for a dataset or tensor. Each batch goes to the model's device; counts come back
            to the CPU.

    Returns:
        name → `LayerCoverage`, in the order of ``layers``.
    """
    layers = conv_layers(model) if layers is None else layers
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counts = {name: [torch.zeros(m.in_channels, dtype=torch.int64, device=device),
                     torch.zeros(m.out_channels, dtype=torch.int64, device=device)] for name, m in layers.items()}

    def hook_for(name):
        def hook(module, args, out):
            counts[name][0] += _covered(args[0]).sum(0)
            counts[name][1] += _covered(out).sum(0)
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    n = 0
    try:
        for x in _batches(images, batch_size):
            model(x.to(device))
            n += len(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return OrderedDict((name, LayerCoverage(c[0].cpu().numpy(), c[1].cpu().numpy(), n))
                       for name, c in counts.items())


def _channel_scores(module: nn.Conv2d, cov: LayerCoverage) -> np.ndarray:
    """Per weight of ``module``: coverage of its input channel + coverage of its output channel."""
    out_ch, in_per_group = module.weight.shape[:2]
    per_group = out_ch // module.groups
    # weight[o, i] reads input channel (o // per_group) * in_per_group + i (groups > 1: grouped convs)
    in_index = (np.arange(out_ch)[:, None] // per_group) * in_per_group + np.arange(in_per_group)[None, :]
    pair = cov.outputs[:, None].astype(np.float64) + cov.inputs[in_index].astype(np.float64)
    return np.broadcast_to(pair[:, :, None, None], tuple(module.weight.shape))


def slice_scores(model: nn.Module, coverage: "OrderedDict[str, LayerCoverage]",
                 layers: "OrderedDict[str, nn.Conv2d] | None" = None) -> "OrderedDict[str, np.ndarray]":
    """ReMoS's score of every conv weight: rank of its channel coverage minus rank of its magnitude.

    Both ranks are taken over all conv weights of the model together (ascending, ties averaged, from 0);
    see the module docstring. Returns name → float64 array of the layer's weight shape.
    """
    layers = conv_layers(model) if layers is None else layers
    missing = [name for name in layers if name not in coverage]
    if missing:
        raise RecipeError(f"Expected coverage for every conv layer; got none for {missing[:5]}. Profile the "
                          "same model with channel_coverage first.")
    channel = np.concatenate([_channel_scores(m, coverage[name]).ravel() for name, m in layers.items()])
    magnitude = np.concatenate([m.weight.detach().abs().cpu().double().numpy().ravel() for m in layers.values()])
    scores = (rankdata(channel, method="average") - 1) - (rankdata(magnitude, method="average") - 1)
    out, start = OrderedDict(), 0
    for name, m in layers.items():
        size = m.weight.numel()
        out[name] = scores[start:start + size].reshape(tuple(m.weight.shape))
        start += size
    return out


def check_ratio(ratio) -> float:
    """``ratio`` as a float strictly inside (0, 1), else a `RecipeError` saying so."""
    return check_number(ratio, "the slice ratio (target.slice_ratio)", low=0.0, high=1.0, low_open=True,
                        high_open=True, doc="(the share of conv weights to remove, e.g. 0.05)", error=RecipeError)


def slice_mask(scores: "OrderedDict[str, np.ndarray]", ratio: float) -> "OrderedDict[str, np.ndarray]":
    """The weights to remove: the ``int(ratio · N)`` lowest ``scores`` over all layers together (a global
    threshold, as ReMoS), ties broken by position. Returns name → bool array, ``True`` = removed.

    Raises:
        RecipeError: ``ratio`` is not strictly inside (0, 1).
    """
    ratio = check_ratio(ratio)
    flat = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in scores.values()] or [np.zeros(0)])
    k = int(ratio * flat.size)
    removed = np.zeros(flat.size, dtype=bool)
    removed[np.argsort(flat, kind="stable")[:k]] = True
    out, start = OrderedDict(), 0
    for name, s in scores.items():
        size = np.asarray(s).size
        out[name] = removed[start:start + size].reshape(np.shape(s))
        start += size
    return out


@torch.no_grad()
def apply_slice(model: nn.Module, mask: "OrderedDict[str, np.ndarray]") -> dict[str, dict]:
    """Zero ``model``'s conv weights where ``mask`` is ``True`` (in place; biases untouched).

    Returns, per layer, ``{"weights": N, "zeroed": k, "ratio": k / N}`` (the ``slicing/summary.json`` rows).
    """
    modules = dict(model.named_modules())
    summary = {}
    for name, m in mask.items():
        module = modules.get(name)
        if not isinstance(module, nn.Conv2d) or tuple(module.weight.shape) != np.shape(m):
            shape = None if module is None or not hasattr(module, "weight") else tuple(module.weight.shape)
            raise RecipeError(f"Expected the slice mask of {name!r} to fit a Conv2d weight of the model; got a "
                              f"mask of shape {np.shape(m)} for {type(module).__name__ if module else 'no module'} "
                              f"(weight shape {shape}). Compute the mask on this model.")
        keep = torch.as_tensor(~np.asarray(m, dtype=bool), device=module.weight.device)
        module.weight.mul_(keep.to(module.weight.dtype))
        zeroed = int(np.count_nonzero(m))
        summary[name] = {"weights": int(np.size(m)), "zeroed": zeroed, "ratio": zeroed / max(int(np.size(m)), 1)}
    return summary


def slice_model(model: nn.Module, images, ratio: float, *,
                batch_size: int = 128) -> tuple["OrderedDict[str, np.ndarray]", dict[str, dict]]:
    """Profile, score, mask and slice ``model`` in place on ``images`` (the target's training set);
    returns the mask and `apply_slice`'s summary."""
    check_ratio(ratio)  # a bad ratio is said before the profile pass, not after
    layers = conv_layers(model)
    coverage = channel_coverage(model, images, layers, batch_size=batch_size)
    mask = slice_mask(slice_scores(model, coverage, layers), ratio)
    return mask, apply_slice(model, mask)
