"""Seeded stratified splits, per-class caps, label budgets, and class alignment of two domains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split
from torch.utils.data import Subset

from ..errors import DataError
from ..validation import check_number
from .domain import Domain, RelabelledDataset


@dataclass(frozen=True)
class DomainSplits:
    """Train and validation index sets of one domain (indices into ``domain.dataset``)."""

    domain: Domain
    train_indices: np.ndarray
    val_indices: np.ndarray

    @property
    def train(self) -> Subset:
        return Subset(self.domain.dataset, self.train_indices.tolist())

    @property
    def val(self) -> Subset:
        return Subset(self.domain.dataset, self.val_indices.tolist())


def _take_per_class(indices: np.ndarray, targets: np.ndarray, n: int, rng) -> np.ndarray:
    kept = [rng.permutation(indices[targets[indices] == c])[:n] for c in np.unique(targets[indices])]
    return np.sort(np.concatenate(kept))


def split_domain(domain: Domain, *, val_fraction: float = 0.15, seed: int = 0,
                 per_class_cap: int | None = None, label_budget: int | None = None) -> DomainSplits:
    """Split ``domain`` into stratified train/validation sets, as in the paper (85 % / 15 %).

    Args:
        val_fraction: share of each class held out for validation, in (0, 1).
        seed: makes the split (and the cap and budget samples) reproducible.
        per_class_cap: keep at most this many instances of each class before splitting.
        label_budget: keep only this many labelled training instances per class (validation is
            untouched), e.g. 10 for a few-shot target.
    """
    check_number(val_fraction, "val_fraction", low=0.0, high=1.0, low_open=True, high_open=True,
                 doc="(the share of each class held out for validation)", error=DataError)
    rng = np.random.default_rng(seed)
    targets = domain.targets
    indices = np.arange(len(targets))
    if per_class_cap is not None:
        indices = _take_per_class(indices, targets, per_class_cap, rng)
    counts = np.bincount(targets[indices], minlength=len(domain.classes))
    too_small = [domain.classes[c] for c in range(len(counts)) if 0 < counts[c] < 2]
    if too_small:
        raise DataError(f"domain {domain.name!r}: classes {too_small} have fewer than 2 instances; "
                        "a stratified train/validation split needs at least 2 per class")
    n, n_classes = len(indices), int((counts > 0).sum())
    n_val = int(np.ceil(val_fraction * n))
    if n_val < n_classes or n - n_val < n_classes:
        raise DataError(f"domain {domain.name!r}: {n} instances cannot be split {1 - val_fraction:.0%} / "
                        f"{val_fraction:.0%} with every one of the {n_classes} classes on both sides; "
                        "raise per_class_cap or change val_fraction")
    train_idx, val_idx = train_test_split(indices, test_size=val_fraction, random_state=seed,
                                          stratify=targets[indices])
    if label_budget is not None:
        train_idx = _take_per_class(train_idx, targets, label_budget, rng)
    return DomainSplits(domain, np.sort(train_idx), np.sort(val_idx))


def align_classes(source: Domain, target: Domain) -> Domain:
    """Return ``target`` with its labels renumbered to follow ``source.classes`` (matched by name).

    Raises:
        DataError: when the two domains do not have the same class names; the message lists the
            classes found only on each side.
    """
    only_source = sorted(set(source.classes) - set(target.classes))
    only_target = sorted(set(target.classes) - set(source.classes))
    if only_source or only_target:
        raise DataError(
            f"the classes of {source.name!r} and {target.name!r} differ: only in the source: "
            f"{only_source or 'none'}; only in the target: {only_target or 'none'}. Use domains with "
            "the same class names (rename or remove the class folders that do not match)")
    if tuple(source.classes) == tuple(target.classes):
        return target
    position = {name: i for i, name in enumerate(source.classes)}
    mapping = np.array([position[name] for name in target.classes], dtype=np.int64)
    return Domain(target.name, tuple(source.classes), RelabelledDataset(target.dataset, mapping),
                  mapping[target.targets])


def select_classes(domain: Domain, names, key: str) -> Domain:
    """``domain`` restricted to the classes ``names`` (in that order), relabelled 0..m-1 (issue 12's
    ``source.classes``/``target.classes``; ``key`` names the recipe key, for the message).

    Raises:
        DataError: a name that is not a class of the domain; the message lists the domain's classes.
    """
    names = tuple(str(n) for n in names)
    unknown = [n for n in names if n not in domain.classes]
    if unknown:
        raise DataError(f"Expected `{key}` to name classes of {domain.name!r}; got unknown class(es) {unknown}. "
                        f"The domain's classes are {list(domain.classes)}.")
    if names == tuple(domain.classes):
        return domain
    mapping = np.full(len(domain.classes), -1, dtype=np.int64)  # old label -> new label (-1: dropped)
    for new, name in enumerate(names):
        mapping[domain.classes.index(name)] = new
    keep = np.flatnonzero(mapping[domain.targets] >= 0)
    dataset = RelabelledDataset(Subset(domain.dataset, keep.tolist()), mapping)
    return Domain(domain.name, names, dataset, mapping[domain.targets[keep]])
