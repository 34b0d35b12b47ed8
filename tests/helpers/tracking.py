"""Real sqlite tracking stores for the tests, the tiny recipe that trains in seconds, and a logged model.

``sqlite_store(root, experiment, template=...)`` points MLflow at ``root/mlflow.db`` (a copy of an empty
store whose tables were made once: making them takes a second or two) with ``experiment`` active and its
artifacts under ``root/artifacts``, and points it back when done. The conftest's ``tracking_store``
fixture gives a test its own store; a module whose tests share trained runs opens one in a
module-scoped fixture through the conftest's ``sqlite_stores``.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from helpers import REPO
from helpers.servers import clean_env

# Recipe overrides (comma-separated, as `--set` takes them) that make the digits recipe train in seconds.
TINY = ("data.source.size=100,data.per_class_cap=12,source.epochs=1,target.epochs=1,"
        "source.batch_size=32,target.batch_size=32")


def tiny_recipe(*extra: str):
    """The digits recipe with the TINY overrides, then ``extra`` ones (a later value of a key wins)."""
    from mlflow_transfer.config import load_recipe

    return load_recipe(REPO / "recipes" / "digits.yaml", [*TINY.split(","), *extra])


@dataclass(frozen=True)
class Store:
    root: Path
    uri: str
    experiment: str
    experiment_id: str
    env: dict[str, str]  # for subprocesses: this environment pointed at the store, no leaked run or experiment

    @staticmethod
    def runs() -> list:
        """Every run in the store, in every experiment."""
        return mlflow.search_runs(search_all_experiments=True, output_format="list")


def make_empty_store(path: Path) -> Path:
    """An sqlite tracking store at ``path`` with MLflow's tables and nothing else."""
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@contextlib.contextmanager
def sqlite_store(root: Path, experiment: str = "tests", *, template: Path | None = None) -> Iterator[Store]:
    """MLflow pointed at a fresh store ``root/mlflow.db`` (a copy of ``template`` when given) with
    ``experiment`` created and active; the previous tracking URI is restored on exit."""
    db = root / "mlflow.db"
    if template is not None:
        shutil.copyfile(template, db)
    uri = f"sqlite:///{db}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = MlflowClient().create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment_id)
        yield Store(root, uri, experiment, experiment_id, clean_env(MLFLOW_TRACKING_URI=uri))
    finally:
        mlflow.set_tracking_uri(previous)


def log_model(model=None, **options) -> mlflow.models.model.ModelInfo:
    """Log ``model`` (by default an untrained alexnet-32 of 10 classes) in the active run as `model`: as
    mlflow-transfer logs its models, in MLflow's pickle-free pt2 format (the input example makes it
    exportable) with the torch requirement given (inferring it would load the model in a subprocess,
    ~8 s). ``options`` go to ``mlflow.pytorch.log_model`` over these."""
    import mlflow.pytorch
    import torch

    from mlflow_transfer.models import build_model

    model = build_model("alexnet-32", 10).eval() if model is None else model
    options = {"name": "model", "input_example": torch.rand(2, 3, 32, 32).numpy(),
               "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"], **options}
    return mlflow.pytorch.log_model(model, **options)
