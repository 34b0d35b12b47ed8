"""Name registry of models (in the spirit of torchvision's ``_api``), all split the paper's way.

Every model is a :class:`TransferNet`: ``embedding`` maps images to the activation right before the
fully connected layers (the paper's instance embedding), ``head`` maps that to class logits, and
``analysis_layers`` lists the conv and linear layers, in forward order, under stable names.
Weights never come from a hub: random initialisation or a local state-dict file.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError


class TransferNet(nn.Module):
    """A classifier split into ``embedding`` (images → (N, D)) and ``head`` ((N, D) → (N, classes)).

    Attributes:
        analysis_layers: ordered mapping of stable layer name → ``nn.Conv2d``/``nn.Linear`` module,
            in forward order along the main path (residual shortcut convs are left out).
    """

    def __init__(self, name: str, embedding: nn.Module, head: nn.Module,
                 layers: list[tuple[str, nn.Module]], plain: nn.Module | None = None):
        super().__init__()
        self.arch = name
        self.embedding = embedding
        self.head = head
        # Not registered as submodules: they are the same modules already held by embedding/head.
        object.__setattr__(self, "_layers", OrderedDict(layers))
        object.__setattr__(self, "plain", plain)  # the torchvision model, for its state-dict names

    @property
    def analysis_layers(self) -> "OrderedDict[str, nn.Module]":
        return self._layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float (N, 3, S, S) → logits (N, num_classes)."""
        return self.head(self.embedding(x))


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry: how to build the model and what input it needs."""

    builder: Callable[[int], TransferNet]
    min_image_size: int
    description: str


def _alexnet32(num_classes: int) -> TransferNet:
    # AlexNet's shape (5 conv, 2 hidden FC) scaled for 32×32 inputs and a CPU; batch norm after each
    # conv makes it train in a few CPU epochs.
    conv = OrderedDict([
        ("conv1", nn.Conv2d(3, 48, 5, padding=2)), ("bn1", nn.BatchNorm2d(48)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(48, 96, 3, padding=1)), ("bn2", nn.BatchNorm2d(96)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(96, 128, 3, padding=1)), ("bn3", nn.BatchNorm2d(128)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(128, 128, 3, padding=1)), ("bn4", nn.BatchNorm2d(128)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(128, 96, 3, padding=1)), ("bn5", nn.BatchNorm2d(96)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(2)), ("avgpool", nn.AdaptiveAvgPool2d(4)), ("flatten", nn.Flatten()),
    ])
    fc = OrderedDict([
        ("drop6", nn.Dropout(0.3)), ("fc6", nn.Linear(96 * 16, 256)), ("relu6", nn.ReLU()),
        ("drop7", nn.Dropout(0.3)), ("fc7", nn.Linear(256, 128)), ("relu7", nn.ReLU()),
        ("fc8", nn.Linear(128, num_classes)),
    ])
    embedding, head = nn.Sequential(conv), nn.Sequential(fc)
    layers = [(n, m) for n, m in list(conv.items()) + list(fc.items()) if isinstance(m, (nn.Conv2d, nn.Linear))]
    return TransferNet("alexnet-32", embedding, head, layers)


def _named_layers(model: nn.Module, skip: tuple[str, ...] = ()) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(s in n for s in skip)]


def _torchvision_sequential(name: str, factory) -> Callable[[int], TransferNet]:
    # alexnet / vgg: features → avgpool → flatten is the embedding, `classifier` is the head.
    def build(num_classes: int) -> TransferNet:
        net = factory(weights=None, num_classes=num_classes)
        layers = _named_layers(net)
        embedding = nn.Sequential(net.features, net.avgpool, nn.Flatten())
        return TransferNet(name, embedding, net.classifier, layers, plain=net)

    return build


def _resnet18(num_classes: int) -> TransferNet:
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    layers = _named_layers(net, skip=("downsample",))
    body = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
    embedding = nn.Sequential(*body, net.avgpool, nn.Flatten())
    return TransferNet("resnet18", embedding, net.fc, layers, plain=net)


def _tv(fn_name: str):
    def factory(**kw):
        import torchvision.models as tvm

        return getattr(tvm, fn_name)(**kw)

    return factory


MODELS: dict[str, ModelInfo] = {
    "alexnet-32": ModelInfo(_alexnet32, 8, "AlexNet-style, 5 conv + 2 hidden FC, sized for 32×32 on a CPU"),
    "alexnet": ModelInfo(_torchvision_sequential("alexnet", _tv("alexnet")), 63,
                         "torchvision AlexNet (use 224×224 images)"),
    "resnet18": ModelInfo(_resnet18, 32, "torchvision ResNet-18"),
    "vgg11_bn": ModelInfo(_torchvision_sequential("vgg11_bn", _tv("vgg11_bn")), 32,
                          "torchvision VGG-11 with batch norm"),
}


def build_model(name: str, num_classes: int, *, weights: str | None = None) -> TransferNet:
    """Build model ``name`` with a ``num_classes``-way head.

    Args:
        weights: optional path of a local state-dict file (``torch.save(model.state_dict())``),
            either of this `TransferNet` or of the plain torchvision model. A final classifier
            layer whose shape does not fit ``num_classes`` is left freshly initialised.
    """
    info = MODELS.get(name)
    if info is None:
        raise ModelError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    model = info.builder(num_classes)
    if weights:
        _load_weights_file(model, Path(weights))
    return model


def load_state(path: Path) -> dict:
    """Read a state dict saved with ``torch.save``, safely (``weights_only=True``).

    Raises:
        ModelError: the file is missing, corrupt, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise ModelError(f"cannot read weights file {path}: it is corrupt or not a torch.save "
                         f"state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file {path} does not hold a state dict (name → tensor)")
    return state


def model_from_state(state: dict, arch: str, num_classes: int, what: str) -> TransferNet:
    """Architecture ``arch`` with ``num_classes`` outputs, holding the tensors of ``state``.

    ``state`` is the state dict of a `TransferNet` or of the plain torchvision model it wraps (a
    model logged outside the recipes); ``what`` names where it came from, for the messages.

    Raises:
        ModelError: the names or shapes do not fit ``arch``.
    """
    model = build_model(arch, num_classes)
    if set(state) >= set(model.state_dict()):
        target = model
    elif model.plain is not None and set(state) >= set(model.plain.state_dict()):
        target = model.plain
    else:
        missing = sorted(set(model.state_dict()) - set(state))
        raise ModelError(f"Expected {what} to hold the parameters of {arch!r} with {num_classes} classes; "
                         f"got other parameter names (missing e.g. {missing[:3]}): it does not match architecture "
                         f"{arch!r}. Pass --arch with the model's architecture.")
    try:
        target.load_state_dict({k: state[k] for k in target.state_dict()})
    except RuntimeError as exc:
        raise ModelError(f"Expected {what} to fit {arch!r} with {num_classes} classes; got "
                         f"{str(exc).splitlines()[0][:200]}. Use the recipe the model was trained with.") from None
    return model


def _load_weights_file(model: TransferNet, path: Path) -> None:
    state = load_state(path)
    # A plain torchvision state dict loads into the wrapped torchvision model (same modules).
    target = model if set(state) & set(model.state_dict()) or model.plain is None else model.plain
    own = target.state_dict()
    last = list(model.analysis_layers.values())[-1]
    head = next(f"{n}." for n, m in target.named_modules() if m is last)
    # e.g. ImageNet weights for a 10-class model: keep the backbone, re-initialise the last layer.
    state = {k: v for k, v in state.items()
             if not (k.startswith(head) and k in own and v.shape != own[k].shape)}
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(head))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or bad:
        raise ModelError(f"weights file {path} does not fit {model.arch}: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}, wrong shapes {bad[:5]}; save it with "
                         f"torch.save(model.state_dict()) from the same architecture")
    target.load_state_dict(state, strict=False)


def freeze_layers(model: TransferNet, depth: int) -> list[str]:
    """Stop gradients for the first ``depth`` analysis layers; returns their names.

    Batch-norm layers between frozen layers stay trainable (their statistics still update); only the
    weights and biases of the listed conv/linear layers are frozen.
    """
    names = list(model.analysis_layers)
    if not 0 <= depth <= len(names):
        raise ModelError(f"freeze_depth must be between 0 and {len(names)} (the analysis layers of "
                         f"{model.arch}: {names}), got {depth}")
    for name in names[:depth]:
        for p in model.analysis_layers[name].parameters():
            p.requires_grad_(False)
    return names[:depth]


def with_new_head(model: TransferNet, num_classes: int, *, seed: int = 0) -> TransferNet:
    """A copy of ``model`` (same architecture and weights) whose last analysis layer is a fresh one with
    ``num_classes`` outputs, initialised from ``seed`` (fine-tuning for another label space, issue 12)."""
    torch.manual_seed(seed)  # the fresh layer's initialisation is part of the run's reproducibility
    fresh = build_model(model.arch, num_classes)
    last = list(fresh.analysis_layers.values())[-1]
    head = next(f"{n}." for n, m in fresh.named_modules() if m is last)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    result = fresh.load_state_dict(state, strict=False)
    if any(not k.startswith(head) for k in result.missing_keys):  # same arch: only the head is new
        raise ModelError(f"Expected the model to fit {model.arch!r} outside its last layer; got missing "
                         f"parameters {result.missing_keys[:5]}.")
    return fresh.train(model.training)
