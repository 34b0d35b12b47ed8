"""Run a model over a batch stream with forward hooks attached, leaving it as it was found."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def run_with_hooks(model: nn.Module, images: torch.Tensor, hooks: dict[nn.Module, Callable],
                   batch_size: int) -> None:
    """Forward ``images`` (N, ...) in eval mode and inference mode, ``batch_size`` at a time, with
    ``hooks`` (module → forward hook) registered; hooks are removed and train/eval restored even on error."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    first = next(model.parameters(), None)
    device = first.device if first is not None else images.device  # batches follow the model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
