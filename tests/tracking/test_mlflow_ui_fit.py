"""At home in MLflow's UI: experiments open as model training, progress is plain lines off a terminal."""

from __future__ import annotations

import io
import re

import mlflow
import pytest
from helpers.tracking import tiny_recipe
from mlflow import MlflowClient

from mlflow_transfer.plugin import mark_experiment, transfer_context
from mlflow_transfer.runtime import progress, quiet_library_progress
from mlflow_transfer.tags import EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING
from mlflow_transfer.tracking import train_source


def _kind(experiment_id: str) -> str | None:
    return MlflowClient().get_experiment(experiment_id).tags.get(EXPERIMENT_KIND)


def test_train_source_marks_its_experiment_as_model_training(tracking_store):
    experiment_id = mlflow.set_experiment("ui-fit").experiment_id
    assert _kind(experiment_id) is None
    run_id = train_source(tiny_recipe())
    assert MlflowClient().get_run(run_id).info.experiment_id == experiment_id
    assert _kind(experiment_id) == EXPERIMENT_KIND_TRAINING


def test_only_the_package_runs_mark_and_a_set_kind_is_kept(tracking_store):
    user = mlflow.set_experiment("someone-elses").experiment_id
    with transfer_context(), mlflow.start_run():  # a run the package did not start through transfer_run
        pass
    with mlflow.start_run():
        pass
    assert _kind(user) is None
    chosen = mlflow.set_experiment("chosen-kind").experiment_id
    MlflowClient().set_experiment_tag(chosen, EXPERIMENT_KIND, "genai_development")
    assert mark_experiment(chosen) is False
    assert _kind(chosen) == "genai_development"  # a user's choice is kept
    fresh = mlflow.set_experiment("fresh").experiment_id
    assert mark_experiment(fresh) is True and _kind(fresh) == EXPERIMENT_KIND_TRAINING
    assert mark_experiment(fresh) is False  # already marked: nothing written again


_ESCAPES = re.compile(r"\x1b\[|\r")


def test_progress_off_a_terminal_prints_a_plain_line_per_tenth():
    out = io.StringIO()  # not a TTY, like stdout/stderr under `mlflow run`
    bar = progress(range(100), desc="train", unit="batch", stream=out)
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    assert seen == list(range(100))
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 11 and not _ESCAPES.search(out.getvalue())
    assert lines[-1].startswith("train: 100/100 batch (100 %), ") and lines[-1].endswith("loss=0.010")
    assert all(re.fullmatch(r"train: \d+/100 batch \(\d+ %\), \d+\.\d s, loss=\S+", line) for line in lines)


@pytest.mark.parametrize("n", [1, 3, 10, 15, 999])
def test_progress_lines_per_step_or_per_tenth(n):
    out = io.StringIO()
    assert list(progress(range(n), desc="classes", unit="class", stream=out)) == list(range(n))
    lines = out.getvalue().splitlines()
    assert len(lines) == min(n, 10) and lines[-1].startswith(f"classes: {n}/{n} class (100 %)")


def test_progress_transient_unknown_length_and_disabled():
    out = io.StringIO()
    assert list(progress(range(50), desc="epoch 1", leave=False, stream=out)) == list(range(50))
    assert out.getvalue() == ""  # the batches inside an epoch: the epoch loop reports
    assert list(progress((i for i in range(7)), desc="stage", unit="step", stream=out)) == list(range(7))
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert re.fullmatch(r"stage: 7 step, \d+\.\d s\n", out.getvalue())
    data = [1, 2]
    assert progress(data, desc="off", enabled=False) is data


def test_progress_on_a_terminal_is_tqdm():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    bar = progress(range(3), desc="tty", stream=Tty())
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mlflows_download_bars_are_off_off_a_terminal_and_a_users_choice_is_kept(monkeypatch):
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as bars

    monkeypatch.delenv(bars.name, raising=False)
    quiet_library_progress(_Terminal())
    assert bars.get() is True  # on a terminal MLflow's bars stay
    quiet_library_progress(io.StringIO())
    assert bars.get() is False
    monkeypatch.setenv(bars.name, "true")
    quiet_library_progress(io.StringIO())
    assert bars.get() is True
