"""Untrusted input at the command line and in the tracking store: pickled logged models, malformed run
ids, hostile recipes and images, unfinished runs, and runs left RUNNING by a killed process.

Each bad input must end in one `mlflow-transfer: error:` line (a `TransferError`), exit status 2 and no
run left RUNNING. Real sqlite stores throughout. The commands run in this process through their click
entry point (`helpers.cli.invoke`), and as real processes where a process is the point: a training
killed with SIGKILL, `mlflow run` of the MLproject, and the installed command's own error line.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import REPO
from helpers.cli import invoke, one_error_line, run_command
from helpers.models import MarkerNet
from helpers.servers import BIN
from helpers.tracking import TINY, Store, log_model
from mlflow import MlflowClient

from mlflow_transfer.config import Recipe, load_recipe
from mlflow_transfer.errors import ModelError, RecipeError, RunLookupError
from mlflow_transfer.tags import TAGS

CLASSES = json.dumps([str(d) for d in range(10)])

pytestmark = pytest.mark.slow


@pytest.fixture()
def store(tracking_store, monkeypatch):
    """A test's own store, with MLflow's pickle opt-in unset (its environment for subprocesses has none)."""
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    return tracking_store


def _one_error(proc, *fragments):
    """One error line holding every fragment, exit status 2, no traceback, and no run left RUNNING."""
    line = one_error_line(proc, *fragments)
    assert [r.info.run_id for r in Store.runs() if r.info.status == "RUNNING"] == []
    return line


# --------------------------------------------------------------------------- pickled logged models


def _pickled_source_run(marker: Path) -> tuple[str, str]:
    """A run that looks like a finished source run, whose logged model is pickled and hostile."""
    with mlflow.start_run() as run:
        mlflow.set_tags({TAGS.role: "source", TAGS.model: "alexnet-32", TAGS.classes: CLASSES,
                         TAGS.recipe: "digits"})
        uri = log_model(MarkerNet(marker), serialization_format="pickle", input_example=None).model_uri
    marker.unlink(missing_ok=True)  # MLflow itself may reload the model while logging it
    return run.info.run_id, uri


def test_finetune_refuses_a_pickled_source_model_unless_trusted(store):
    marker = store.root / "unpickled"
    run_id, _ = _pickled_source_run(marker)
    _one_error(invoke("finetune", "--source-run-id", run_id, "--set", TINY), "serialization_format='pickle'",
               "--trust-pickled-models", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true")
    assert not marker.exists()  # refused before anything was unpickled
    assert [r.data.tags.get(TAGS.role) for r in store.runs()] == ["source"]  # no target run was started

    proc = invoke("finetune", "--source-run-id", run_id, "--set", TINY, "--trust-pickled-models")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists()
    target = [r for r in store.runs() if r.data.tags.get(TAGS.role) == "target"]
    assert len(target) == 1 and target[0].info.status == "FINISHED"


def test_diagnose_refuses_pickled_model_uris_unless_trusted(store, monkeypatch):
    from mlflow_transfer.tracking.diagnose import resolve_pair

    marker = store.root / "unpickled"
    _, uri = _pickled_source_run(marker)
    proc = invoke("diagnose", "--source-model-uri", uri, "--target-model-uri", uri,
                "--recipe", "recipes/digits.yaml", "--set", TINY)
    _one_error(proc, f"at {uri}", "--trust-pickled-models")
    assert not marker.exists()

    recipe = load_recipe(REPO / "recipes/digits.yaml", TINY.split(","))
    with pytest.raises(ModelError, match="--trust-pickled-models"):  # MLflow's own default (true) is no opt-in
        resolve_pair(source_model_uri=uri, target_model_uri=uri, recipe=recipe)
    assert not marker.exists()
    pair = resolve_pair(source_model_uri=uri, target_model_uri=uri, recipe=recipe, trust_pickled=True)
    assert marker.exists() and pair.source_model.arch == "alexnet-32"
    marker.unlink()
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow's variable, set explicitly
    resolve_pair(source_model_uri=uri, target_model_uri=uri, recipe=recipe)
    assert marker.exists()


def test_a_logged_model_that_is_not_ready_is_refused(store):
    from mlflow_transfer.tracking.lookup import load_model_weights

    with mlflow.start_run():
        info = log_model()
    assert load_model_weights(info.model_uri, "alexnet-32", 10).arch == "alexnet-32"  # pt2: loads by default
    MlflowClient().finalize_logged_model(info.model_id, "FAILED")  # e.g. its upload broke off
    with pytest.raises(ModelError, match=r"to be READY; got status FAILED"):
        load_model_weights(info.model_uri, "alexnet-32", 10)


@pytest.mark.parametrize("uri, fragment", [
    ("/etc", "Expected a model URI of the form"),
    ("file:///", "Expected a model URI of the form"),
    ("runs:/../x/model", "Expected a run id in the model URI"),
    ("runs:/abc/../../../etc", "Expected a run-relative model path in the model URI"),
    ("models:/../m-1", "Expected a model name or id in the model URI"),
])
def test_model_uris_must_name_a_model_on_the_server(store, uri, fragment):
    from mlflow_transfer.tracking.lookup import load_model_weights

    with pytest.raises(ModelError, match=fragment):
        load_model_weights(uri, "alexnet-32", 10)


def test_diagnose_refuses_a_local_path_as_model_uri(store):
    _one_error(invoke("diagnose", "--source-model-uri", "/", "--target-model-uri", "/",
                    "--recipe", "recipes/digits.yaml"), "Expected a model URI of the form", "got '/'")


# --------------------------------------------------------------------------- run ids at the boundary


@pytest.mark.parametrize("args, option", [
    (["diagnose", "--target-run-id", "../x"], "--target-run-id"),
    (["diagnose", "--target-run-id", "abc", "--source-run-id", "a b"], "--source-run-id"),
    (["finetune", "--source-run-id", "../../etc/passwd"], "--source-run-id"),
    (["finetune", "--source-run-id", "abc\x1b[2J"], "--source-run-id"),
    (["timetravel", "--target-run-id", "abc", "--diagnostics-run-id", "../0/meta"], "--diagnostics-run-id"),
])
def test_malformed_run_ids_are_refused_before_any_lookup(store, args, option):
    line = _one_error(invoke(*args), f"Expected a {option} value of letters, digits")
    assert "\x1b" not in line  # a control character in the input never reaches the terminal raw


def test_run_ids_from_tags_are_checked_too(store):
    from mlflow_transfer.tracking.diagnose import resolve_pair
    from mlflow_transfer.tracking.lookup import get_run

    with pytest.raises(RunLookupError, match="Expected a run id"):
        get_run("../../mlruns")
    with mlflow.start_run() as target:
        mlflow.set_tags({TAGS.role: "target", TAGS.source_run_id: "../0/meta"})
    with pytest.raises(RunLookupError, match=r"Expected a run id .*got '\.\./0/meta'"):
        resolve_pair(target_run_id=target.info.run_id)


# --------------------------------------------------------------------------- hostile recipes


def _bomb_yaml() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # 10**9 strings once expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "name: bomb\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("content, fragment", [
    (b"\xff\xd8\xff\xe0 JFIF not a recipe", "to be UTF-8 text; got byte 0xff"),
    (b"name: x\n\x00\x01\x02", "a NUL byte"),
    (b"- source\n- target\n", "to hold a YAML mapping of keys to values; got a list"),
    (_bomb_yaml().encode(), "small YAML document"),
    (("x: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "small YAML document"),
    (b"name: x\ndata: {source: [unclosed\n", "to be valid YAML; got"),
])
def test_hostile_recipe_files_are_one_clear_error(store, content, fragment):
    path = store.root / "recipe.yaml"
    path.write_bytes(content)
    _one_error(invoke("train-source", "--recipe", str(path)), str(path), fragment)


def test_a_huge_recipe_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * (2 << 20) + b"\nname: x\n")
    with pytest.raises(RecipeError, match="small YAML file"):
        load_recipe(path)


def _float_keys(cls=Recipe, prefix=""):
    import dataclasses
    import typing

    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if dataclasses.is_dataclass(hint):
            yield from _float_keys(hint, f"{prefix}{f.name}.")
        elif hint is float:
            yield f"{prefix}{f.name}"


FLOAT_KEYS = sorted(_float_keys())


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-inf", ".inf", "1e999"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_floats_are_refused_for_every_float_key(key, value):
    with pytest.raises(RecipeError, match=rf"Expected `{key}` to be a finite number"):
        load_recipe(REPO / "recipes/digits.yaml", [f"{key}={value}"])


def test_nan_learning_rate_from_the_command_line(store):
    assert {"source.lr", "target.momentum", "data.val_fraction"} <= set(FLOAT_KEYS)  # the walk above works
    # the installed command itself, in a process of its own: one line on its stderr, exit status 2
    _one_error(run_command(store.env, "train-source", "--set", "source.lr=nan"),
               "Expected `source.lr` to be a finite number")
    assert store.runs() == []


# --------------------------------------------------------------------------- hostile images


def _png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes that declares width × height RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


def _imagefolder_recipe(tmp: Path, bad: bytes) -> Path:
    from PIL import Image

    for domain in ("a", "b"):
        for cls in ("cat", "dog"):
            (tmp / "imgs" / domain / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(tmp / "imgs" / domain / cls / f"{i}.png")
    (tmp / "imgs" / "a" / "dog" / "bomb.png").write_bytes(bad)
    recipe = tmp / "folders.yaml"
    recipe.write_text(f"name: folders\ndata:\n  source: {{name: imagefolder, root: {tmp / 'imgs'}, subset: a}}\n"
                      f"  target: {{name: imagefolder, root: {tmp / 'imgs'}, subset: b}}\n"
                      "source: {epochs: 1, batch_size: 4}\ntarget: {epochs: 1, batch_size: 4}\n")
    return recipe


@pytest.mark.parametrize("width", [100_000, 13_000])  # above 2x MAX_IMAGE_PIXELS (PIL errors), above 1x (PIL warns)
def test_decompression_bomb_image_is_a_data_error_naming_the_file(store, width):
    recipe = _imagefolder_recipe(store.root, _png_header_only(width, width))
    _one_error(invoke("train-source", "--recipe", str(recipe)), "bomb.png", "decompression bomb")
    assert [r.info.status for r in store.runs()] == ["FAILED"]  # the source run that met it


# --------------------------------------------------------------------------- unfinished runs


def _model_run(role: str, **tags) -> str:
    with mlflow.start_run() as run:
        mlflow.set_tags({TAGS.role: role, TAGS.model: "alexnet-32", TAGS.classes: CLASSES, **tags})
        log_model()
    return run.info.run_id


def test_diagnose_refuses_a_pair_with_an_unfinished_run(store):
    from mlflow_transfer.tracking.diagnose import resolve_pair

    source = _model_run("source")
    target = _model_run("target", **{TAGS.source_run_id: source})
    MlflowClient().set_terminated(target, "FAILED")
    _one_error(invoke("diagnose", "--target-run-id", target, "--recipe", "recipes/digits.yaml", "--set", TINY),
               f"target run {target}", "got status FAILED", "--allow-unfinished")
    MlflowClient().set_terminated(target, "FINISHED")
    MlflowClient().set_terminated(source, "KILLED")
    recipe = load_recipe(REPO / "recipes/digits.yaml", TINY.split(","))
    with pytest.raises(RunLookupError, match=r"source run .* got status KILLED.*--allow-unfinished"):
        resolve_pair(target_run_id=target, recipe=recipe)
    pair = resolve_pair(target_run_id=target, recipe=recipe, allow_unfinished=True)
    assert pair.source_run_id == source


def test_mlproject_diagnose_passes_allow_unfinished(store):
    source = _model_run("source")
    target = _model_run("target", **{TAGS.source_run_id: source})
    MlflowClient().set_terminated(target, "FAILED")
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", "diagnose",
                           "--experiment-name", store.experiment, "-P", f"target_run_id={target}",
                           "-P", "allow_unfinished=false"],
                          cwd=store.root, env=store.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "got status FAILED. Diagnose a FINISHED pair, or pass --allow-unfinished" in proc.stderr


# --------------------------------------------------------------------------- runs left RUNNING


def test_a_killed_training_is_found_and_marked_failed(store):
    from mlflow_transfer.plugin import transfer_context
    from mlflow_transfer.tracking.lifecycle import process_tags

    proc = subprocess.Popen([str(BIN / "mlflow-transfer"), "train-source", "--experiment-name", store.experiment,
                             "--set", TINY + ",source.epochs=200"], cwd=REPO, env=store.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 240, None
    while time.time() < deadline and killed is None:
        time.sleep(1)
        killed = next((r for r in store.runs() if r.info.status == "RUNNING" and TAGS.pid in r.data.tags), None)
    assert killed is not None, "the training never started its run"
    proc.send_signal(signal.SIGKILL)  # no handler runs: the run stays RUNNING
    proc.wait(timeout=60)
    assert MlflowClient().get_run(killed.info.run_id).info.status == "RUNNING"
    assert killed.data.tags[TAGS.pid] == str(proc.pid)

    with transfer_context(**{TAGS.role: "source", **process_tags()}), mlflow.start_run() as live:
        listed = invoke("runs", "--stale")
        everything = invoke("runs")
        marked = invoke("runs", "--stale", "--mark-failed")
        assert MlflowClient().get_run(live.info.run_id).info.status == "RUNNING"
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert killed.info.run_id in listed.stdout and f"its process {proc.pid}" in listed.stdout
    assert "source" in listed.stdout and "1 run(s) stale" in listed.stdout
    assert live.info.run_id not in listed.stdout  # alive: this very process
    assert live.info.run_id in everything.stdout and "not stale" in everything.stdout
    assert marked.returncode == 0 and "1 run(s) marked FAILED" in marked.stdout, marked.stderr[-2000:]
    after = MlflowClient().get_run(killed.info.run_id)
    assert after.info.status == "FAILED" and after.info.end_time is not None
    assert "is gone" in after.data.tags[TAGS.stale_reason]
    assert MlflowClient().get_run(live.info.run_id).info.status == "FINISHED"


def test_runs_of_other_hosts_are_stale_only_after_older_than(store):
    from mlflow_transfer.tracking.lifecycle import find_stale_runs

    client = MlflowClient()
    experiment = client.get_experiment_by_name(store.experiment).experiment_id
    hours_ago = lambda h: int((time.time() - h * 3600) * 1000)  # noqa: E731
    old = client.create_run(experiment, start_time=hours_ago(30),
                            tags={TAGS.role: "target", TAGS.host: "elsewhere", TAGS.pid: "1"}).info.run_id
    recent = client.create_run(experiment, start_time=hours_ago(2),
                               tags={TAGS.role: "target", TAGS.host: "elsewhere", TAGS.pid: "1"}).info.run_id
    untagged = client.create_run(experiment, start_time=hours_ago(30), tags={TAGS.role: "source"}).info.run_id
    foreign = client.create_run(experiment, start_time=hours_ago(30)).info.run_id  # not ours: never touched
    stale = {r.run_id: r.reason for r in find_stale_runs(experiment_name=store.experiment, older_than_hours=24)}
    assert set(stale) == {old, untagged}
    assert "on host elsewhere" in stale[old] and "no process tags" in stale[untagged]
    assert {r.run_id for r in find_stale_runs(older_than_hours=1)} == {old, recent, untagged}
    assert foreign not in {r.run_id for r in find_stale_runs(older_than_hours=0)}
    with pytest.raises(RunLookupError, match="Expected an experiment named 'nope'"):
        find_stale_runs(experiment_name="nope")


# --------------------------------------------------------------------------- devices (issue 12)

@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [("train-source", "--set", TINY), ("main", "--set", TINY),
                                     ("diagnose", "--target-run-id", "0" * 32),
                                     ("timetravel", "--target-run-id", "0" * 32)])
def test_an_absent_device_is_one_error_line_exit_2_and_no_run(store, command):
    # CUDA is genuinely absent on this machine: the message names the devices present and the fix
    _one_error(invoke(*command, "--device", "cuda"), "Expected device 'cuda' to be present; got only ['cpu']",
               "--device auto", "--device cpu")
    assert store.runs() == []  # refused before any run was opened


def test_a_bad_n_steps_is_a_usage_error_naming_both_forms(store):
    proc = invoke("diagnose", "--target-run-id", "0" * 32, "--n-steps", "lots")
    assert proc.returncode == 2 and "--n-steps auto" in proc.stderr and "Traceback" not in proc.stderr
    assert store.runs() == []
