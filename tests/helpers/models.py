"""The small models the tests build, in one place.

- ``seeded(name, num_classes, seed=...)``: a registry model built right after ``torch.manual_seed``, so
  the same call gives the same weights.
- ``with_running_statistics(model, mean, var)``: random batch-norm running statistics, so that eval and
  train mode compute different things.
- ``transfer_net(body, head, layers)``: a ``TransferNet`` assembled from named modules (e.g. a shape the
  diagnostics must refuse); ``tiny_net``: one of three analysis layers that trains in milliseconds.
- ``MarkerNet``: alexnet-32 whose unpickling creates a file. Logged with
  ``mlflow.pytorch.log_model(..., serialization_format="pickle")`` it stands for a hostile model: if the
  marker file appears, loading it ran code the file carried. It must import by this module's name
  (``helpers.models`` with ``tests/`` on the path) so that a trusted load, also in a subprocess, can
  unpickle it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from mlflow_transfer.models import TransferNet, build_model


def seeded(name: str = "alexnet-32", num_classes: int = 10, *, seed: int = 0, **kwargs) -> TransferNet:
    """``build_model(name, num_classes, **kwargs)`` right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return build_model(name, num_classes, **kwargs)


def with_running_statistics(model: nn.Module, mean: tuple[float, float],
                            var: tuple[float, float] = (0.5, 2.0)) -> nn.Module:
    """``model`` with each batch norm's running mean and variance drawn uniformly from ``mean`` and
    ``var`` (from torch's global generator: seed it first)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(*mean)
                module.running_var.uniform_(*var)
    return model


def transfer_net(body: list[tuple[str, nn.Module]], head: list[tuple[str, nn.Module]],
                 layers: list[tuple[str, nn.Module]]) -> TransferNet:
    """A TransferNet named "tiny": ``body`` the embedding, ``head`` the classifier, ``layers`` analysed."""
    return TransferNet("tiny", nn.Sequential(OrderedDict(body)), nn.Sequential(OrderedDict(head)), layers)


def tiny_net(num_classes: int = 2, *, seed: int = 0, dropout: float = 0.2, channels: int = 4,
             hidden: int = 8) -> TransferNet:
    """conv1 → ReLU → 2×2 pool | fc1 → ReLU → dropout → fc2 on 3-channel images of any size: trains in
    milliseconds; the same ``seed`` gives the same weights. ``channels`` and ``hidden`` are the widths
    of conv1 and fc1 (wider layers for tests that need more neurons)."""
    torch.manual_seed(seed)
    conv1, fc1 = nn.Conv2d(3, channels, 3, padding=1), nn.Linear(4 * channels, hidden)
    fc2 = nn.Linear(hidden, num_classes)
    return transfer_net([("conv1", conv1), ("relu1", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(2)),
                         ("flatten", nn.Flatten())],
                        [("fc1", fc1), ("relu2", nn.ReLU()), ("drop", nn.Dropout(dropout)), ("fc2", fc2)],
                        [("conv1", conv1), ("fc1", fc1), ("fc2", fc2)])


class MarkerNet(TransferNet):
    """alexnet-32 (same state-dict names) that touches ``marker`` when unpickled."""

    def __init__(self, marker: str | Path, num_classes: int = 10):
        base = build_model("alexnet-32", num_classes)
        super().__init__(base.arch, base.embedding, base.head, list(base.analysis_layers.items()))
        self.marker = str(marker)

    def __setstate__(self, state):
        Path(state["marker"]).write_text("unpickled: code from the model file ran\n")
        super().__setstate__(state)
