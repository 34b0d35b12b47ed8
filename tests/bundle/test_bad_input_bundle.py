"""Bad input at the bundle and tracking-reader boundary: forged manifests, files that are not what
their manifest says, cache entries the cache did not write, ids from a URL, and a tracking server
that goes away mid-session. Each ends in one `TransferError` that says what was expected, and
nothing outside the bundle or the cache is read or deleted.

Everything is real: bundles written by `BundleWriter`, a sqlite MLflow store under tmp_path, and an
`mlflow server` subprocess on 127.0.0.1 that the last tests kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers.servers import BIN, clean_env, mlflow_server
from mlflow import MlflowClient

from mlflow_transfer.bundle import BundleReader, BundleWriter, PairBundle, validate_bundle
from mlflow_transfer.bundle.io import MAX_PNG_PIXELS
from mlflow_transfer.errors import BundleError, CacheError, RunLookupError, TrackingUnavailableError
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking.bundles import (CACHE_MARKER, fetch_bundle, list_diagnosed_pairs, list_experiments,
                                              log_bundle)



# ---------------------------------------------------------------------------------------------- helpers

def _write_bundle(root: Path, *, big: bool = False) -> Path:
    """A small bundle with the names `PairBundle` reads (so the typed reader can be exercised too)."""
    w = BundleWriter(root)
    w.write_array("cka/matrix", np.eye(2))
    w.write_table("statistics/history", {"model": ["source"], "dataset": ["target_val"], "epoch": [0],
                                         "accuracy": [0.5]})
    w.write_json("statistics/summary", {"layers": ["l1"], "classes": ["a", "b"]})
    w.write_png("features/source/l1/patches", np.full((4, 6, 3), 9, np.uint8))
    for f in ("neurons", "indices", "values"):
        w.write_array(f"features/source/l1/{f}", np.arange(3))
    if big:  # large enough that copying it takes longer than the clock's tick (see the upload-order test)
        w.write_array("conductance/target/l1", np.zeros((4, 1 << 20), np.float32))
    w.finish(classes=["a", "b"], layers=["l1"], runs={"diagnostics": "d"})
    return root


@pytest.fixture()
def bundle(tmp_path) -> Path:
    return _write_bundle(tmp_path / "b")


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _save_manifest(root: Path, manifest) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


def _plant(root: Path, rel: str, data: bytes) -> None:
    """Replace the bundle file ``rel`` by ``data`` and update the manifest so its size and hash match:
    the file is then wrong only in its content, the case a hash check cannot catch."""
    (root / rel).write_bytes(data)
    manifest = _manifest(root)
    for e in manifest["files"]:
        if e["path"] == rel:
            e.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    _save_manifest(root, manifest)


def _entry_for(root: Path, path: str, source: Path) -> dict:
    data = source.read_bytes()
    return {"path": path, "kind": "array", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _png(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (1-bit grey) with whatever pixel data follows."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(idat or b"\0" * 64)) + chunk(b"IEND", b""))


def _npy(header: str, body: bytes = b"") -> bytes:
    header = header.encode("latin1")
    pad = 64 - (10 + len(header) + 1) % 64
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + pad + 1) + header + b" " * pad + b"\n" + body


def _tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


# ------------------------------------------------------------- bundle paths stay inside the bundle (point 2)

@pytest.fixture()
def secret(tmp_path) -> Path:
    """A file outside the bundle that a forged manifest tries to reach."""
    path = tmp_path / "secret.npy"
    np.save(path, np.array([42]))
    return path


@pytest.mark.parametrize("forged", ["cka/../../secret.npy", "ABSOLUTE"])
def test_manifest_path_leaving_the_bundle_is_refused(bundle, secret, forged):
    forged = str(secret) if forged == "ABSOLUTE" else forged
    manifest = _manifest(bundle)
    manifest["files"].append(_entry_for(bundle, forged, secret))  # size and hash match the outside file
    _save_manifest(bundle, manifest)
    for open_it in (BundleReader, validate_bundle, PairBundle.open, lambda r: BundleReader(r, verify=False)):
        with pytest.raises(BundleError, match=r"Expected manifest entry \d+ to name a file inside the bundle"):
            open_it(bundle)


def _linked_from_outside(bundle: Path, rel: str, outside: Path) -> None:
    """Move ``bundle/rel`` (a file or a folder) to ``outside`` and leave a symbolic link to it in its place:
    the same content, so the hashes still match."""
    (bundle / rel).rename(outside)
    (bundle / rel).symlink_to(outside, target_is_directory=outside.is_dir())


def _refused_as_a_link(bundle: Path, file: str, read) -> None:
    with pytest.raises(BundleError, match=f"Expected {file} as a plain file .*; got a symbolic link"):
        validate_bundle(bundle)
    with pytest.raises(BundleError, match="symbolic link"):
        read(BundleReader(bundle, verify=False))


def test_symlinked_file_in_a_bundle_is_refused_on_validation_and_read(bundle, tmp_path):
    _linked_from_outside(bundle, "cka/matrix.npy", tmp_path / "outside.npy")
    _refused_as_a_link(bundle, "cka/matrix.npy", lambda reader: reader.read_array("cka/matrix"))


def test_symlinked_folder_in_a_bundle_is_refused(bundle, tmp_path):
    _linked_from_outside(bundle, "features", tmp_path / "elsewhere")
    _refused_as_a_link(bundle, "features/source/l1/.*", lambda reader: reader.read_png("features/source/l1/patches"))


def test_symlinked_manifest_is_refused(bundle, tmp_path):
    _linked_from_outside(bundle, "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(BundleError, match="Expected manifest.json as a plain file .*; got a symbolic link"):
        BundleReader(bundle)


def test_validate_bundle_command_reports_a_forged_path_in_one_line(bundle, secret):
    manifest = _manifest(bundle)
    manifest["files"].append(_entry_for(bundle, "cka/../../secret.npy", secret))
    _save_manifest(bundle, manifest)
    proc = subprocess.run([str(BIN / "mlflow-transfer"), "validate-bundle", str(bundle)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "to name a file inside the bundle" in lines[0], proc.stderr


# --------------------------------------------------------------- malformed manifests are one error (point 3)

@pytest.mark.parametrize("case, mutate", [
    ("manifest a list", lambda m: [m]),
    ("files not a list", lambda m: {**m, "files": "cka/matrix.npy"}),
    ("files missing", lambda m: {k: v for k, v in m.items() if k != "files"}),
    ("entry not an object", lambda m: {**m, "files": [1]}),
    ("entry missing keys", lambda m: {**m, "files": [{"path": "cka/matrix.npy"}]}),
    ("bytes a string", lambda m: {**m, "files": [{**m["files"][0], "bytes": "12"}]}),
    ("bytes a bool", lambda m: {**m, "files": [{**m["files"][0], "bytes": True}]}),
    ("sha256 a number", lambda m: {**m, "files": [{**m["files"][0], "sha256": 123}]}),
    ("unknown kind", lambda m: {**m, "files": [{**m["files"][0], "kind": "pickle"}]}),
    ("kind and extension differ", lambda m: {**m, "files": [{**m["files"][0], "kind": "image"}]}),
    ("path twice", lambda m: {**m, "files": [m["files"][0], m["files"][0]]}),
    ("path a list", lambda m: {**m, "files": [{**m["files"][0], "path": ["a"]}]}),
    ("schema_version a dict", lambda m: {**m, "schema_version": {"major": 1}}),
    ("schema_version missing", lambda m: {k: v for k, v in m.items() if k != "schema_version"}),
])
def test_malformed_manifest_is_one_bundle_error(bundle, case, mutate):
    _save_manifest(bundle, mutate(_manifest(bundle)))
    with pytest.raises(BundleError, match=r"^Expected .* in bundle .*; got .*diagnose` again"):
        BundleReader(bundle)


def test_deeply_nested_manifest_is_refused_not_a_recursion_error(bundle):
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="not valid JSON \\(nested too deeply\\)"):
        BundleReader(bundle)


@pytest.mark.parametrize("field, value", [("classes", "abc"), ("layers", [1, 2]), ("scores", [0.4]),
                                          ("runs", "d")])
def test_pair_manifest_fields_of_the_wrong_type_are_refused(bundle, field, value):
    _save_manifest(bundle, {**_manifest(bundle), field: value})
    with pytest.raises(BundleError, match=f"Expected manifest field '{field}' as a"):
        PairBundle.open(bundle)


# ------------------------------------------- files whose hash matches but whose content is not their kind

def _read(bundle: Path, what: str):
    pair = PairBundle.open(bundle)  # verified: the planted file's hash matches
    return {"table": pair.history, "array": pair.cka, "json": pair.summary,
            "image": lambda: pair.patches("source", "l1")}[what]()


@pytest.mark.parametrize("case, rel, data, expected", [
    ("garbage Parquet", "statistics/history.parquet", b"PAR1 not really parquet", "a Parquet table"),
    ("empty Parquet", "statistics/history.parquet", b"", "a Parquet table"),
    ("garbage .npy", "cka/matrix.npy", b"garbage, not an array", "a numeric .npy array"),
    ("truncated .npy", "cka/matrix.npy", _npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }",
                                              b"\0" * 8), "header promises"),
    ("forged huge .npy shape", "cka/matrix.npy",
     _npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000, 1000000000), }"), "header promises"),
    ("pickled .npy", "cka/matrix.npy", _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                                            b"\x80\x04N."), "only pickle can read"),
    ("garbage JSON", "statistics/summary.json", b"{not json", "a JSON record"),
    ("deeply nested JSON", "statistics/summary.json", b"[" * 100_000 + b"]" * 100_000, "a JSON record"),
    ("JSON record not an object", "statistics/summary.json", b"[1, 2]", "to hold a JSON object"),
    ("garbage PNG", "features/source/l1/patches.png", b"\x89PNG but not", "a PNG image"),
    ("a JPEG named .png", "features/source/l1/patches.png", b"\xff\xd8\xff\xe0" + b"\0" * 64, "a PNG image"),
])
def test_unreadable_file_with_matching_hash_is_a_bundle_error(bundle, case, rel, data, expected):
    kind = {".parquet": "table", ".npy": "array", ".json": "json", ".png": "image"}[Path(rel).suffix]
    _plant(bundle, rel, data)
    with pytest.raises(BundleError, match=f"^Expected {rel} .*in bundle {re.escape(str(bundle))}; got ") as info:
        _read(bundle, kind)
    assert expected in str(info.value)


def test_truncated_png_with_matching_hash_is_a_bundle_error(bundle):
    rel = "features/source/l1/patches.png"
    data = (bundle / rel).read_bytes()
    _plant(bundle, rel, data[: len(data) // 2])
    with pytest.raises(BundleError, match=f"^Expected {rel} to be a PNG image in bundle .*truncated"):
        _read(bundle, "image")


@pytest.mark.parametrize("width, height", [(100_000, 100_000),  # beyond PIL's own bomb limit
                                           (9_000, 9_000)])     # under PIL's limit, over the bundle's
def test_decompression_bomb_png_is_refused_before_decoding(bundle, width, height):
    assert width * height > MAX_PNG_PIXELS
    rel = "features/source/l1/patches.png"
    _plant(bundle, rel, _png(width, height))
    with pytest.raises(BundleError, match=f"^Expected {rel} to be a PNG image of at most {MAX_PNG_PIXELS:,} pixels"):
        _read(bundle, "image")


# --------------------------------------------------------- the cache deletes only what it wrote (point 1)

@pytest.fixture()
def victim(tmp_path) -> Path:
    """A user's folder that a crafted `?pair=` must never delete."""
    path = tmp_path / "x"
    (path / "keep").mkdir(parents=True)
    (path / "keep" / "notes.txt").write_text("mine")
    return path


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_run_id_naming_a_folder_outside_the_cache_deletes_nothing(tmp_path, victim, how):
    cache = tmp_path / "cache"
    cache.mkdir()
    run_id = str(victim) if how == "absolute" else "../x"
    with pytest.raises(RunLookupError, match="Expected a diagnostics run id of letters, digits"):
        fetch_bundle(run_id, cache, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert _tree(victim) == ["keep", "keep/notes.txt"]
    assert not (tmp_path / "mlflow.db").exists()  # refused before any tracking call


def test_symlink_planted_in_the_cache_is_left_alone(tmp_path, victim):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "0123abcd").symlink_to(victim, target_is_directory=True)
    with pytest.raises(CacheError, match=r"cache entry .*0123abcd .*got a symbolic link .*It was left alone"):
        fetch_bundle("0123abcd", cache, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert (cache / "0123abcd").is_symlink() and _tree(victim) == ["keep", "keep/notes.txt"]


def test_foreign_folder_in_the_cache_is_left_alone(tmp_path):
    cache = tmp_path / "cache"
    (cache / "0123abcd").mkdir(parents=True)
    (cache / "0123abcd" / "thesis.tex").write_text("mine")
    with pytest.raises(CacheError, match=f"cache entry .*0123abcd .*without its {CACHE_MARKER} file.*left alone"):
        fetch_bundle("0123abcd", cache, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert (cache / "0123abcd" / "thesis.tex").read_text() == "mine"


# ------------------------------------------------------ a local store: uploads land whole (point 5)

def _diagnostics_run(bundle_root: Path | None, *, upload=log_bundle, status="FINISHED",
                     target_run_id="0123abcd") -> str:
    """A diagnostics run in the active experiment, its bundle uploaded by ``upload``, ended ``status``."""
    with mlflow.start_run() as run:
        mlflow.set_tags({TAGS.role: "diagnostics", TAGS.target_run_id: target_run_id})
        if bundle_root is not None:
            upload(bundle_root)
    MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


def _artifacts(run_id: str) -> Path:
    return Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "diagnostics"


def test_log_bundle_uploads_the_manifest_last(module_store, tmp_path):
    run_id = _diagnostics_run(_write_bundle(tmp_path / "b", big=True))
    remote = _artifacts(run_id)
    others = [p.stat() for p in remote.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert len(others) == 8
    manifest = (remote / "manifest.json").stat()
    assert manifest.st_mtime_ns >= max(s.st_mtime_ns for s in others)
    # MLflow's local store copies each file's mtime from the source (copystat); the change time is when the
    # copy was made, so it shows the upload order (mlflow.log_artifacts copied the top-level manifest first).
    assert manifest.st_ctime_ns >= max(s.st_ctime_ns for s in others)


def test_bundle_uploaded_without_its_manifest_is_incomplete_and_not_cached(module_store, tmp_path):
    root = _write_bundle(tmp_path / "b")

    def killed_before_the_manifest(local):  # what an upload killed before its last call leaves
        for path in sorted(Path(local).rglob("*")):
            if path.is_file() and path.name != "manifest.json":
                mlflow.log_artifact(str(path), f"diagnostics/{path.parent.relative_to(local).as_posix()}")

    run_id = _diagnostics_run(root, upload=killed_before_the_manifest, target_run_id="feedbeef")
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match=r"bundle is incomplete .*Diagnose again: mlflow-transfer diagnose "
                                          r"--target-run-id feedbeef"):
        fetch_bundle(run_id, cache)
    assert not cache.exists() or _tree(cache) == []


def test_fetch_replaces_its_own_corrupt_entry_but_not_a_foreign_one(module_store, tmp_path):
    run_id = _diagnostics_run(_write_bundle(tmp_path / "b"))
    cache = tmp_path / "cache"
    fetch_bundle(run_id, cache)
    assert (cache / run_id / CACHE_MARKER).is_file()
    (cache / run_id / "cka" / "matrix.npy").write_bytes(b"x")  # damaged: ours, so fetched again
    np.testing.assert_array_equal(fetch_bundle(run_id, cache).cka(), np.eye(2))
    (cache / run_id / CACHE_MARKER).unlink()  # the same folder, not marked as ours: left alone
    (cache / run_id / "cka" / "matrix.npy").write_bytes(b"x")
    with pytest.raises(CacheError, match="left alone"):
        fetch_bundle(run_id, cache)
    assert (cache / run_id / "cka" / "matrix.npy").read_bytes() == b"x"


def test_listing_incomplete_runs_is_opt_in_with_a_status(module_store, tmp_path):
    done = _diagnostics_run(_write_bundle(tmp_path / "b"))
    failed = _diagnostics_run(None, status="FAILED", target_run_id="bad id; rm -rf ~")
    default = {p["diagnostics_run_id"] for p in list_diagnosed_pairs([module_store.experiment_id])}
    assert done in default and failed not in default
    rows = {p["diagnostics_run_id"]: p for p in list_diagnosed_pairs([module_store.experiment_id], include_incomplete=True)}
    assert rows[done]["status"] == "FINISHED" and rows[failed]["status"] == "FAILED"
    assert rows[failed]["target_run_id"] is None  # a tag that is no run id never reaches a command or a path


@pytest.mark.parametrize("bad", ["../1", "1 OR 1=1", ""])
def test_malformed_experiment_id_is_refused_before_the_query(module_store, bad):
    with pytest.raises(RunLookupError, match="Expected a valid experiment id"):
        list_diagnosed_pairs([bad])


def test_unknown_run_is_does_not_exist_only_when_the_store_says_so(module_store, tmp_path):
    with pytest.raises(RunLookupError, match="does not exist on .* \\(the server says so\\)"):
        fetch_bundle("0" * 32, tmp_path / "cache")


def test_store_that_cannot_open_is_tracking_unavailable(tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database " * 20)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for call in (lambda: list_diagnosed_pairs(["0"], tracking_uri=uri), lambda: list_experiments(uri),
                 lambda: fetch_bundle("0123abcd", tmp_path / "cache", tracking_uri=uri)):
        with pytest.raises(TrackingUnavailableError, match=f"cannot reach the tracking server at {uri} "
                                                           r"\(.*file is not a database"):
            call()


# --------------------------------------------------------- the tracking server goes away (point 4)

@pytest.fixture(scope="module")
def dead_server(tmp_path_factory):
    """A real `mlflow server` holding one diagnosed pair (experiment "a") and an empty experiment "b";
    the app state is opened while it runs, then the server is killed."""
    from ui.readers import TrackingSource
    from ui.state import AppState

    root = tmp_path_factory.mktemp("dead-server")
    env = {k: v for k, v in clean_env().items() if not k.startswith("MLFLOW_")}
    with mlflow_server(root, env, start_new_session=True) as (uri, proc), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not after minutes of retries
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        client = MlflowClient(uri)
        exp_a, exp_b = client.create_experiment("a"), client.create_experiment("b")
        run = client.create_run(exp_a, tags={TAGS.role: "diagnostics", TAGS.target_run_id: "0123abcd"})
        client.log_artifacts(run.info.run_id, str(_write_bundle(root / "bundle")), "diagnostics")
        client.set_terminated(run.info.run_id, "FINISHED")
        state = AppState(TrackingSource(uri, cache_dir=root / "app-cache"))
        # while the server runs, the app shows the pair: what follows is the server going away
        assert state.experiment == exp_a and state.pair == run.info.run_id and state.bundle is not None
        assert [p["diagnostics_run_id"] for p in list_diagnosed_pairs([exp_a], tracking_uri=uri)] == [
            run.info.run_id]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        yield {"uri": uri, "root": root, "exp_a": exp_a, "exp_b": exp_b, "run_id": run.info.run_id,
               "state": state}


def test_listing_after_the_server_died_is_tracking_unavailable(dead_server):
    uri = dead_server["uri"]
    for listing in (lambda: list_diagnosed_pairs([dead_server["exp_a"]], tracking_uri=uri),
                    lambda: list_diagnosed_pairs(tracking_uri=uri), lambda: list_experiments(uri)):
        with pytest.raises(TrackingUnavailableError, match=f"cannot reach the tracking server at {uri} .*start it"):
            listing()


def test_fetch_after_the_server_died_is_tracking_unavailable_not_does_not_exist(dead_server):
    uri, cache = dead_server["uri"], dead_server["root"] / "fresh-cache"
    with pytest.raises(TrackingUnavailableError, match=f"cannot reach the tracking server at {uri}"):
        fetch_bundle(dead_server["run_id"], cache, tracking_uri=uri)
    assert not cache.exists() or _tree(cache) == []


def test_app_switching_experiment_after_the_server_died_shows_the_banner(dead_server):
    state = dead_server["state"]
    state.experiment = dead_server["exp_b"]
    assert state.pairs == []
    assert state.error.startswith(f"cannot reach the tracking server at {dead_server['uri']}")
