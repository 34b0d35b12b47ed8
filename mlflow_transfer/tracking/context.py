"""The run context shared by the training runs and the diagnostics run: the pair's data, its id, the code
version, and `transfer_run`, the context manager every run of this package is started with.

`runs` (source training, fine-tuning) and `diagnose` both import this module; neither imports the other
(`pipeline` is the one place that calls both).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from torch.utils.data import Subset

from .. import __version__
from ..config import Recipe
from ..data import DomainSplits, align_classes, load_domain, select_classes, split_domain
from ..data.domain import RelabelledDataset
from ..errors import DataError
from ..plugin import mark_experiment, transfer_context
from ..tags import TAGS
from .lifecycle import process_tags

__all__ = ["PairData", "code_version", "pair_id", "prepare_data", "shared_subset", "transfer_run"]


@dataclass(frozen=True)
class PairData:
    """Both domains, split; the target's labels follow the source's class order, unless the target has
    its own label space (``target.new_head``: ``target.classes`` in the order given)."""

    source: DomainSplits
    target: DomainSplits

    @property
    def classes(self) -> tuple[str, ...]:
        """The source model's classes (all classes, when both domains share one label space)."""
        return self.source.domain.classes

    # issue 12: label spaces that differ (a target with its own head)
    @property
    def source_classes(self) -> tuple[str, ...]:
        return self.source.domain.classes

    @property
    def target_classes(self) -> tuple[str, ...]:
        return self.target.domain.classes

    @property
    def shared_classes(self) -> tuple[str, ...]:
        """The classes both models know, by name, in the target's order."""
        return tuple(c for c in self.target_classes if c in self.source_classes)

    @property
    def pair_classes(self) -> tuple[str, ...]:
        """The diagnostics' label space: the target's classes, then the source's others (the source
        domain's instances keep their class names in the instance view)."""
        return self.target_classes + tuple(c for c in self.source_classes if c not in self.target_classes)

    def eval_sets(self, role: str = "source") -> dict:
        """What a run of ``role`` is evaluated on each epoch. When the label spaces differ, the other
        domain's sets keep only the shared classes, relabelled into the model's own label space (none
        shared: they are left out, and so are their ``acc_*`` metrics)."""
        own, other = ("source", "target") if role == "source" else ("target", "source")
        splits = {"source": self.source, "target": self.target}
        sets = {f"{own}_train": splits[own].train, f"{own}_val": splits[own].val}
        if self.source_classes == self.target_classes:
            sets.update({f"{other}_train": splits[other].train, f"{other}_val": splits[other].val})
        elif self.shared_classes:
            to = splits[own].domain.classes
            for split in ("train", "val"):
                sets[f"{other}_{split}"] = shared_subset(splits[other], split, to)
        return {k: sets[k] for k in ("source_train", "source_val", "target_train", "target_val") if k in sets}


def prepare_data(recipe: Recipe) -> PairData:
    """Load, align and split the recipe's two domains (label budget applies to the target only)."""
    d = recipe.data
    domains = []
    for cfg in (d.source, d.target):
        options = {"root": recipe.resolve_root(cfg) if cfg.root is not None or d.root else None,
                   "subset": cfg.subset, "split": cfg.split, "size": cfg.size}
        domains.append(load_domain(cfg.name, image_size=d.image_size, seed=recipe.seed, **options))
    source, target = domains
    if recipe.source.classes is not None:
        source = select_classes(source, recipe.source.classes, "source.classes")
    if recipe.target.classes is not None:
        target = select_classes(target, recipe.target.classes, "target.classes")
    if not recipe.target.new_head:
        try:
            target = align_classes(source, target)
        except DataError as exc:
            raise DataError(f"{exc}; or, to fine-tune for other classes, set `target.new_head: true` (and "
                            "`target.classes` to choose them)") from None
    common = {"val_fraction": d.val_fraction, "seed": recipe.seed, "per_class_cap": d.per_class_cap}
    return PairData(split_domain(source, **common),
                    split_domain(target, label_budget=d.label_budget, **common))


def shared_subset(splits: DomainSplits, split: str, to_classes) -> RelabelledDataset:
    """The ``split`` ("train"/"val") instances of ``splits`` whose class is in ``to_classes``, labelled by
    its index there (a class name keeps its meaning across label spaces)."""
    classes = splits.domain.classes
    mapping = np.array([to_classes.index(c) if c in to_classes else -1 for c in classes], dtype=np.int64)
    indices = splits.train_indices if split == "train" else splits.val_indices
    kept = indices[mapping[splits.domain.targets[indices]] >= 0]
    return RelabelledDataset(Subset(splits.domain.dataset, kept.tolist()), mapping)


def code_version() -> str:
    """Hash of the package's Python sources: a changed trainer never reuses an old source run."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def transfer_run(role: str, recipe: Recipe, *, nested: bool, name: str, extra_tags: dict | None = None,
                 experiment_id: str | None = None):
    """A run of this package with role ``role`` (a `TAGS.role` value), tagged with the recipe, the code
    version and the process (host/pid/start, so a run its process never closed is found again by
    ``runs --stale``). Attaches to the run ``mlflow run`` created for this entry point when there is
    one (``MLFLOW_RUN_ID``, not nested), else starts one named ``name`` (in ``experiment_id`` if given).
    Yields the active `mlflow.ActiveRun`; an exception inside marks it FAILED."""
    # Attach to the run `mlflow run` created for this entry point, else create one.
    attach = not nested and os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None
    # process tags: a run its process never closed (SIGKILL) is found again by `runs --stale`
    tags = {TAGS.role: role, TAGS.recipe: recipe.name, TAGS.code_version: code_version(),
            **process_tags(), **(extra_tags or {})}
    with transfer_context(**tags), mlflow.start_run(nested=nested, run_name=None if attach else name,
                                                    experiment_id=None if attach else experiment_id) as run:
        mlflow.set_tags({TAGS.version: __version__, **tags})
        mark_experiment(run.info.experiment_id)  # also when attached to the run `mlflow run` made
        yield run


def pair_id(recipe: Recipe, source_run_id: str, target_run_id: str) -> str:
    """The pair's id (tag `TAGS.pair_id`): recipe name and the first 8 characters of both run ids."""
    return f"{recipe.name}/{source_run_id[:8]}/{target_run_id[:8]}"
