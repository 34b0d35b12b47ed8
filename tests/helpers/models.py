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
- ``foreign(kind)``: a classifier that is no registry model (issue 12), as a user would log it:
  ``OwnNamesCNN`` (three layers under its own names), ``TinyViT`` (patch conv, two transformer blocks,
  written so torch.export keeps the batch dynamic) or torchvision's ``resnet18``.
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


# --- Foreign classifiers (issue 12): plain nn.Modules with their own names, as a user would log them.

class OwnNamesCNN(nn.Module):
    """Three analysis layers under the model's own names (``stem``, ``body.mix``, ``classify``), a
    functional forward (F.relu, F.max_pool2d, torch.flatten) and no registry shape."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.body = nn.Sequential(OrderedDict([("mix", nn.Conv2d(6, 8, 3, padding=1)), ("norm", nn.BatchNorm2d(8)),
                                               ("act", nn.ReLU())]))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classify = nn.Linear(8 * 4, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of ``classify`` (the embedding), written out for the tests' reference."""
        x = torch.nn.functional.max_pool2d(torch.relu(self.stem(x)), 2)
        return torch.flatten(self.pool(self.body(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # written with the batch size read from x, so torch.export keeps it dynamic
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), _Attention(dim, heads), nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """A ViT-like classifier: conv patch embedding (8 px patches), a cls token, 2 transformer blocks
    (attention: qkv → proj; MLP: fc1 → GELU → fc2), layer norm, and a Linear head on the cls token."""

    def __init__(self, num_classes: int = 10, dim: int = 16, heads: int = 2, patch: int = 8):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(_Block(dim, heads), _Block(dim, heads))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of ``head`` (the embedding): the normalised cls token."""
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1)
        return self.norm(self.blocks(tokens))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def foreign(kind: str, num_classes: int = 10, *, seed: int = 0) -> nn.Module:
    """A seeded foreign classifier in eval mode: ``"cnn"`` (`OwnNamesCNN`), ``"vit"`` (`TinyViT`) or
    ``"resnet18"`` (torchvision's, untrained); batch norms get random running statistics."""
    torch.manual_seed(seed)
    if kind == "resnet18":
        from torchvision.models import resnet18

        model = resnet18(weights=None, num_classes=num_classes)
    else:
        model = {"cnn": OwnNamesCNN, "vit": TinyViT}[kind](num_classes)
    return with_running_statistics(model, (-0.2, 0.2)).eval()
