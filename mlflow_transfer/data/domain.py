"""The `Domain` record every loader returns, and the helpers loaders share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

DIGIT_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Domain:
    """One data domain, ready for training.

    Attributes:
        name: domain name as shown to users (e.g. ``"printed-digits"``, ``"office31/amazon"``).
        classes: class names; label ``i`` means ``classes[i]``.
        dataset: indexable dataset; item ``i`` is ``(image, label)`` with ``image`` a float32
            tensor of shape ``(3, S, S)`` with values in [0, 1] and ``label`` an ``int``.
        targets: int64 array of shape ``(N,)``, ``targets[i]`` is the label of item ``i``
            (kept separately so splits never need to load images).
    """

    name: str
    classes: tuple[str, ...]
    dataset: Dataset
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


class TransformedDataset(Dataset):
    """Applies ``transform`` to the image of every ``(image, label)`` item of ``base``."""

    def __init__(self, base: Dataset, transform):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(image), int(label)


class RelabelledDataset(Dataset):
    """Maps the labels of ``base`` through ``mapping`` (an int array: old label -> new label)."""

    def __init__(self, base: Dataset, mapping: np.ndarray):
        self.base = base
        self.mapping = mapping

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image, int(self.mapping[int(label)])


def tensor_domain(name: str, classes, images: torch.Tensor, labels: np.ndarray) -> Domain:
    """A `Domain` over in-memory images of shape ``(N, 3, S, S)`` (float32 in [0, 1])."""
    labels = np.asarray(labels, dtype=np.int64)
    dataset = torch.utils.data.TensorDataset(images, torch.from_numpy(labels))
    return Domain(name=name, classes=tuple(classes), dataset=_IntLabels(dataset), targets=labels)


class _IntLabels(Dataset):
    # TensorDataset yields 0-d tensors as labels; loaders promise plain ints.
    def __init__(self, base):
        self.base = base
        self.tensors = base.tensors

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image, int(label)
