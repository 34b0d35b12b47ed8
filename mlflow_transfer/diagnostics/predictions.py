"""Both models' predictions on whole validation sets, streamed batch by batch (§5.1's statistics).

The confusion table and per-class accuracies describe the validation sets the runs' accuracy curves
were measured on, not the capped sample the costly diagnostics analyse: predictions are cheap, so
each batch is read once, sent to each model's device, and only labels and predicted classes are kept
(a user's validation set need not fit in memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import DiagnosticsError

__all__ = ["ValidationPredictions", "ValidationSets", "predict_validation"]


@dataclass(frozen=True)
class ValidationSets:
    """The two domains' whole validation sets, each a torch ``Dataset`` of ``(image, label)`` items
    (batched here) or any iterable of ``(images (B, C, H, W), labels (B,))`` batches; ``source``
    may be None (no source-domain statistics)."""

    target: Any
    source: Any = None


@dataclass(frozen=True)
class ValidationPredictions:
    """Labels (N,) int64 and each model's predicted classes ``{"source": (N,), "target": (N,)}`` int64."""

    labels: np.ndarray
    predictions: dict[str, np.ndarray]


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _batches(data, batch_size: int, name: str) -> Iterator:
    if isinstance(data, Dataset):
        return iter(DataLoader(data, batch_size=batch_size, shuffle=False))
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, torch.Tensor, np.ndarray)):
        return iter(data)
    raise DiagnosticsError(f"Expected the {name} validation set as a torch Dataset of (image, label) items or "
                           f"an iterable of (images, labels) batches; got {type(data).__name__}.")


def predict_validation(models: dict[str, nn.Module], data, n_classes: int, *, name: str = "target",
                       batch_size: int = 256) -> ValidationPredictions:
    """Predicted classes of every model in ``models`` on every instance of ``data`` (eval mode, each on
    its own device; training mode restored afterwards).

    Args:
        models: role → `TransferNet` (or any module mapping images to (B, C) logits).
        data: a validation set as :class:`ValidationSets` takes it.
        n_classes: C; every label must lie in [0, C).
        name: the domain, for messages.

    Raises:
        DiagnosticsError: a batch that is not ``(images, labels)`` with 4-D images and as many integer
            labels in [0, C), or an empty set.
    """
    labels, preds = [], {r: [] for r in models}
    modes = {r: m.training for r, m in models.items()}
    try:
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            for i, batch in enumerate(_batches(data, batch_size, name)):
                try:
                    x, y = batch[0], batch[1]
                except (TypeError, IndexError, KeyError):
                    raise DiagnosticsError(f"Expected each batch of the {name} validation set as (images, labels); "
                                           f"got {type(batch).__name__} in batch {i}.") from None
                x, y = torch.as_tensor(x), np.asarray(torch.as_tensor(y).cpu()).reshape(-1)
                if x.ndim != 4 or len(x) != len(y):
                    raise DiagnosticsError(f"Expected batch {i} of the {name} validation set as images (B, C, H, W) "
                                           f"and B labels; got images {tuple(x.shape)} and {len(y)} labels.")
                if y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= n_classes)):
                    raise DiagnosticsError(f"Expected the {name} validation set's labels as class indices in "
                                           f"[0, {n_classes}); got {y.dtype} values in batch {i}.")
                labels.append(y.astype(np.int64))
                for role, model in models.items():
                    out = model(x.to(_device(model)))
                    preds[role].append(out.argmax(1).cpu().numpy().astype(np.int64))
    finally:
        for r, m in models.items():
            m.train(modes[r])
    if not labels or sum(len(y) for y in labels) == 0:
        raise DiagnosticsError(f"Expected a non-empty {name} validation set; got no instances.")
    return ValidationPredictions(np.concatenate(labels), {r: np.concatenate(p) for r, p in preds.items()})
