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

from .. import __version__
from ..config import Recipe
from ..data import DomainSplits, align_classes, load_domain, split_domain
from ..plugin import mark_experiment, transfer_context
from ..tags import TAGS
from .lifecycle import process_tags

__all__ = ["PairData", "code_version", "pair_id", "prepare_data", "transfer_run"]


@dataclass(frozen=True)
class PairData:
    """Both domains, split; the target's labels follow the source's class order."""

    source: DomainSplits
    target: DomainSplits

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.domain.classes

    def eval_sets(self) -> dict:
        return {"source_train": self.source.train, "source_val": self.source.val,
                "target_train": self.target.train, "target_val": self.target.val}


def prepare_data(recipe: Recipe) -> PairData:
    """Load, align and split the recipe's two domains (label budget applies to the target only)."""
    d = recipe.data
    domains = []
    for cfg in (d.source, d.target):
        options = {"root": recipe.resolve_root(cfg) if cfg.root is not None or d.root else None,
                   "subset": cfg.subset, "split": cfg.split, "size": cfg.size}
        domains.append(load_domain(cfg.name, image_size=d.image_size, seed=recipe.seed, **options))
    source, target = domains[0], align_classes(*domains)
    common = {"val_fraction": d.val_fraction, "seed": recipe.seed, "per_class_cap": d.per_class_cap}
    return PairData(split_domain(source, **common),
                    split_domain(target, label_budget=d.label_budget, **common))


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
