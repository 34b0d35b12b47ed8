"""`PairSource.compare` (issue 16): a TrackingSource over a real sqlite store (the listing reused for the TTL, a
finished run's summary kept by run id, a running one's never; started by `pairs`, shared by concurrent
callers, a failure raised to them) and a MemorySource (a ready listing, or rows
built from its pair rows and bundles, checked against the bundle's own records)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from helpers.compare import DIGITS, Runs
from mlflow import MlflowClient

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import TrackingUnavailableError
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking.compare import classes_hash, summary_tag
from ui import readers
from ui.readers import CompareListing, MemorySource, TrackingSource


def test_tracking_source_reuses_a_listing_for_the_ttl_and_keeps_finished_summaries(tracking_store, monkeypatch):
    exp = tracking_store.experiment_id
    runs, client = Runs(exp), MlflowClient()
    a = runs.target("a")
    d = runs.diagnostics(a, status="RUNNING", summary=None)
    source = TrackingSource(tracking_store.uri)
    first = source.compare(exp)
    assert [r["target_run_id"] for r in first.rows] == [a] and first.rows[0]["command"] is not None
    b = runs.target("b")
    client.set_tag(d, TAGS.summary, summary_tag(["conv1"], [0.5], [0.9], DIGITS))
    client.set_terminated(d, "FINISHED")
    assert source.compare(exp) is first  # within the TTL: the same listing
    monkeypatch.setattr(readers, "COMPARE_TTL_S", 0.0)
    rows = {r["target_run_id"]: r for r in source.compare(exp).rows}
    assert set(rows) == {a, b}
    assert rows[a]["diagnostics_run_id"] == d and rows[a]["layers"] == ["conv1"] and rows[a]["command"] is None
    # a FINISHED run's summary is kept by run id: a later change of its tag is not read again
    client.set_tag(d, TAGS.summary, summary_tag(["changed"], [0.5], [0.9], DIGITS))
    assert {r["target_run_id"]: r for r in source.compare(exp).rows}[a]["layers"] == ["conv1"]
    # a fresh source reads it
    assert {r["target_run_id"]: r for r in TrackingSource(tracking_store.uri).compare(exp).rows}[a]["layers"] \
        == ["changed"]


def test_tracking_source_keys_listings_by_sweep(tracking_store):
    exp = tracking_store.experiment_id
    runs = Runs(exp)
    sweep = runs.sweep("s")
    inside = runs.target("inside", sweep=sweep)
    runs.target("outside")
    source = TrackingSource(tracking_store.uri)
    assert len(source.compare(exp).rows) == 2
    assert [r["target_run_id"] for r in source.compare(exp, sweep).rows] == [inside]
    assert source.compare(exp).sweeps == [{"run_id": sweep, "name": "s"}]


def test_memory_source_gives_a_ready_listing():
    listing = CompareListing(rows=[{"target_run_id": "t1"}], settings=["target.lr"])
    source = MemorySource({"1": "e"}, compare_listings={("1", None): listing, ("1", "s1"): CompareListing()})
    assert source.compare("1") is listing and source.compare("1", "s1").rows == []


def test_memory_source_builds_rows_from_its_pairs_and_bundles(tiny_bundle):
    rows = [{"diagnostics_run_id": "d1", "target_run_id": "t1", "source_run_id": "s1", "model": "alexnet-32",
             "target_accuracy": 0.7, "transferability_score": 0.4, "setting": {"target.lr": "0.1"}, "sweep_id": "w1"},
            {"diagnostics_run_id": "d2", "target_run_id": "t2", "model": "alexnet-32", "status": "FAILED",
             "target_accuracy": 0.6, "transferability_score": 0.9, "setting": {"target.lr": "0.2"}, "sweep_id": "w1",
             "classes_hash": None},
            {"diagnostics_run_id": "d3", "target_run_id": "t3", "model": "resnet-18", "setting": {}}]
    source = MemorySource({"1": "e"}, {"1": rows}, {"d1": tiny_bundle, "d3": tiny_bundle})
    listing = source.compare("1")
    bundle = PairBundle.open(tiny_bundle)
    by_id = {r["target_run_id"]: r for r in listing.rows}
    assert set(by_id) == {"t1"} and {x["target_run_id"] for x in listing.left_out} == {"t2", "t3"}
    row = by_id["t1"]
    assert row["layers"] == bundle.layers and row["classes_hash"] == classes_hash(bundle.label_spaces()["target"])
    table = bundle.layer_comparison()
    overall = np.asarray(table["class_index"]) == -1
    np.testing.assert_allclose(np.array(row["inherited_share"], dtype=float),  # None: not finite
                               np.asarray(table["inherited_weight_share"], dtype=float)[overall])
    diagonal = np.diag(bundle.cka())
    assert [x is None for x in row["cka"]] == [not math.isfinite(x) for x in diagonal]
    finite = [x for x in diagonal if math.isfinite(x)]
    assert row["cka_mean"] == (pytest.approx(sum(finite) / len(finite)) if finite else None)
    assert row["target_accuracy"] == 0.7 and row["command"] is None and row["sweep_id"] == "w1"
    # the failed diagnosis: the command, no diagnostics outcome (its summary would be another label space
    # here, since it has no bundle: left out, with the reason)
    reasons = {x["target_run_id"]: x["reason"] for x in listing.left_out}
    assert "label space" in reasons["t2"] and "model 'resnet-18'" in reasons["t3"]
    assert [r["target_run_id"] for r in source.compare("1", "w1").rows] == ["t1"]
    assert source.compare("1").sweeps == [{"run_id": "w1", "name": "w1"}]


@pytest.fixture()
def counted(monkeypatch):
    """`list_compare_rows` counting its calls (each a little slow, so that callers overlap)."""
    from mlflow_transfer.tracking import compare

    calls, real = [], compare.list_compare_rows

    def listing(*args, **kwargs):
        calls.append(args)
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "list_compare_rows", listing)
    return calls


def test_listing_pairs_starts_the_compare_listing_and_every_caller_shares_one(tracking_store, counted):
    exp = tracking_store.experiment_id
    runs = Runs(exp)
    runs.diagnostics(runs.target("a"))
    source = TrackingSource(tracking_store.uri)
    assert len(source.pairs(exp)) == 1
    for _ in range(100):  # the listing was started by `pairs`, before anyone asked for it
        if counted:
            break
        time.sleep(0.05)
    assert counted == [(exp,)]
    waiting = [threading.Thread(target=source.compare, args=(exp,)) for _ in range(4)]
    for t in waiting:
        t.start()
    listing = source.compare(exp)
    for t in waiting:
        t.join()
    assert counted == [(exp,)] and [r["target_run_id"] for r in listing.rows] == [runs.client.search_runs(
        [exp], f"tags.`{TAGS.role}` = 'target'")[0].info.run_id]
    assert source.compare(exp) is listing and len(counted) == 1


def test_a_failed_listing_raises_to_its_caller_and_is_made_again(monkeypatch, counted):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    source = TrackingSource("http://127.0.0.1:9")
    for attempt in (1, 2):
        with pytest.raises(TrackingUnavailableError, match="127.0.0.1:9"):
            source.compare("0")
        assert len(counted) == attempt


def test_a_preview_is_the_newest_rows_while_the_whole_listing_is_made(tracking_store, monkeypatch):
    from concurrent.futures import Future

    from mlflow_transfer.tracking.compare import list_compare_rows

    exp = tracking_store.experiment_id
    runs = Runs(exp)
    targets = [runs.target(f"t{i}", lr=str(i)) for i in range(4)]
    for t in targets:
        runs.diagnostics(t)
    monkeypatch.setattr(readers, "PREVIEW_ROWS", 2)
    source = TrackingSource(tracking_store.uri)
    in_flight = source._making[("compare", exp, None)] = Future()  # a whole listing still being made
    first = source.compare(exp, preview=True)
    assert first.partial and [r["target_run_id"] for r in first.rows] == targets[:1:-1][:2]
    assert source.compare(exp, preview=True) is first  # asked again while waiting: kept, no new search
    in_flight.set_result(list_compare_rows(exp, tracking_uri=tracking_store.uri))
    whole = source.compare(exp, preview=True)
    assert not whole.partial and len(whole.rows) == 4 and whole.rows[:2] == first.rows


def _until(check, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def test_first_pairs_are_the_newest_at_once_then_the_whole_list(tracking_store, monkeypatch):
    exp = tracking_store.experiment_id
    runs = Runs(exp)
    diagnosed = [runs.diagnostics(runs.target(f"t{i}")) for i in range(5)]
    newest = diagnosed[::-1]
    monkeypatch.setattr(readers, "PREVIEW_ROWS", 2)
    source = TrackingSource(tracking_store.uri)
    rows, whole = source.first_pairs(exp)
    assert not whole and [r["diagnostics_run_id"] for r in rows] == newest[:2]
    rows = _until(lambda: (lambda r, w: w and r)(*source.first_pairs(exp)), "the whole pair list never came")
    assert [r["diagnostics_run_id"] for r in rows] == newest
    assert source.pairs(exp) == rows  # kept: the blocking call returns it at once
    # a list no longer than the first page is whole at once: nothing is made in the background
    monkeypatch.setattr(readers, "PREVIEW_ROWS", 5)
    other = TrackingSource(tracking_store.uri)
    rows, whole = other.first_pairs(exp)
    assert whole and len(rows) == 5 and not other._making


def test_a_failed_whole_pair_list_is_raised_to_the_next_first_page_once(tracking_store, monkeypatch):
    from mlflow_transfer.tracking import bundles

    exp = tracking_store.experiment_id
    runs = Runs(exp)
    for i in range(4):
        runs.diagnostics(runs.target(f"t{i}"))
    monkeypatch.setattr(readers, "PREVIEW_ROWS", 2)
    real, calls = bundles.list_diagnosed_pairs, []

    def failing_whole(*args, max_pairs=None, **kwargs):  # the first page is read; the whole list fails
        calls.append(max_pairs)
        if max_pairs and max_pairs > 3:
            time.sleep(0.3)  # after the first page was shown
            raise TrackingUnavailableError("the server went away (planted)")
        return real(*args, max_pairs=max_pairs, **kwargs)

    monkeypatch.setattr(bundles, "list_diagnosed_pairs", failing_whole)
    source = TrackingSource(tracking_store.uri)
    assert not source.first_pairs(exp)[1]
    _until(lambda: not source._making, "the whole list was never tried")
    with pytest.raises(TrackingUnavailableError, match="planted"):
        source.first_pairs(exp)
    rows, whole = source.first_pairs(exp)  # raised once: asked again, the first page and a new try
    assert not whole and len(rows) == 2 and calls.count(5000) == 2


def test_a_first_page_can_leave_the_whole_listing_to_the_next_ask_and_fresh_drops_the_kept_one(tracking_store,
                                                                                                monkeypatch):
    exp = tracking_store.experiment_id
    runs = Runs(exp)
    for i in range(3):
        runs.diagnostics(runs.target(f"t{i}"))
    monkeypatch.setattr(readers, "PREVIEW_ROWS", 2)
    source = TrackingSource(tracking_store.uri)
    assert source.compare(exp, preview=True, start=False).partial and not source._making  # nothing started yet
    assert len(_until(lambda: (lambda x: not x.partial and x)(source.compare(exp, preview=True)),
                      "the whole listing never came").rows) == 3
    newer = runs.target("t3")
    first = source.compare(exp, preview=True, fresh=True, start=False)  # a reload: the newest page at once
    assert first.partial and first.rows[0]["target_run_id"] == newer
    whole = _until(lambda: (lambda x: not x.partial and x)(source.compare(exp, preview=True)), "no new listing")
    assert len(whole.rows) == 4  # not the listing kept from before the reload
