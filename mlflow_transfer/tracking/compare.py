"""The compare listing (issue 16): every target run of an experiment (or of one sweep) with its setting and
outcomes, read from run params, tags and latest metric values only — no bundle is opened.

`list_compare_rows` makes two paged searches (target runs, diagnostics runs; run side by side in threads)
and one for the sweep parents, joins diagnostics runs to their target by ``transfer.target_run_id``, and
reads:

- the setting from the target run's params: the recipe keys `tracking.runs` logs from ``Recipe.flat()``
  (the data-size counts ``n_*`` it logs beside them are left out);
- the outcomes from the latest FINISHED diagnostics run's metrics (``target_val_accuracy``, the
  transferability score, ``cka_mean``, ``dir_*``, ``domain_cv_accuracy``, ``findings_count``) and the
  target run's (``logme``, ``leep``; ``best_acc_target_val`` stands in for the accuracy of a row that
  was never diagnosed);
- the per-depth lists from the diagnostics run's ``transfer.summary`` tag (`summary_tag`, written by
  ``diagnose``), parsed defensively: a damaged tag reads as no summary.

Only comparable rows are kept: the same model and target label space (``classes_hash``); the largest such
group wins (ties: the newest row's) and the others are listed in ``left_out`` with what differs. Tags are
free text: run-id tags that are not ids read as None, and every value is shown escaped by the app.
MLflow is imported when a listing is asked for: the app imports `CompareListing` at start-up without it.
An ``http(s)`` server's search answers are read as REST JSON (`_search_pages`); other stores through
`MlflowClient`; both give the same rows (tests/tracking/test_compare.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import RunLookupError
from ..tags import TAGS
from ..validation import check_run_id

__all__ = ["COUNT_PARAMS", "CompareListing", "OUTCOMES", "ROW_KEYS", "SUMMARY_VERSION", "classes_hash",
           "diagnose_command", "list_compare_rows", "listing_from_rows", "parse_summary", "summary_tag"]

# The scalar outcomes of a row, in the order a table shows them.
OUTCOMES = ("target_accuracy", "transferability_score", "logme", "leep", "cka_mean", "dir_output", "dir_feature",
            "domain_cv_accuracy", "findings_count")
# The keys of a row (see the contract in `CompareListing`).
ROW_KEYS = ("target_run_id", "diagnostics_run_id", "source_run_id", "experiment_id", "name", "target_status",
            "diagnostics_status", "model", "classes_hash", "source_domain", "target_domain", "method", "sweep_id",
            "setting", *OUTCOMES, "layers", "inherited_share", "cka", "command")
# Outcome key -> the diagnostics run's metric it is read from.
DIAGNOSTICS_METRICS = {"target_accuracy": "target_val_accuracy", "transferability_score": "transferability_score",
                       "cka_mean": "cka_mean", "dir_output": "dir_output", "dir_feature": "dir_feature",
                       "domain_cv_accuracy": "domain_cv_accuracy", "findings_count": "findings_count",
                       "logme": "logme", "leep": "leep"}
TARGET_METRICS = {"target_accuracy": "best_acc_target_val", "logme": "logme", "leep": "leep"}
# Params a target run logs beside the recipe's keys (the data sizes): not settings.
COUNT_PARAMS = frozenset({"n_source_train", "n_source_val", "n_target_train", "n_target_val"})
SUMMARY_VERSION = 1
SUMMARY_LIMIT = 8000  # MLflow's limit on a tag value
DEFAULT_METHOD = "finetune"  # a target run without the method tag (older runs) was fine-tuned


@dataclass(frozen=True)
class CompareListing:
    """What the Compare tab shows: ``rows`` (one per comparable target run, newest first; keys `ROW_KEYS`:
    run ids and statuses, the target run's tags, ``setting`` {recipe key: str}, the `OUTCOMES` (float or
    None), the per-depth ``layers`` / ``inherited_share`` / ``cka`` ([] without a summary) and ``command``
    (None, or the `diagnose_command` of a row without a FINISHED diagnostics run)), ``settings`` (recipe keys whose values differ between the rows,
    sorted), ``left_out`` (``{"target_run_id", "name", "reason"}`` of runs not comparable with the rows)
    and ``sweeps`` (``{"run_id", "name"}`` of the experiment's sweep parents). ``partial``: the newest target
    runs only (`list_compare_rows(newest=…)`), shown while the whole listing is made."""

    rows: list[dict] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    left_out: list[dict] = field(default_factory=list)
    sweeps: list[dict] = field(default_factory=list)
    partial: bool = False


def diagnose_command(target_run_id: str) -> str:
    """The command that diagnoses a target run (shown on a row without a finished diagnosis)."""
    return f"mlflow-transfer diagnose --target-run-id {target_run_id}"


def classes_hash(classes) -> str:
    """sha256[:12] of the JSON list of a label space (class names in label order)."""
    return hashlib.sha256(json.dumps([str(c) for c in classes]).encode()).hexdigest()[:12]


def _finite_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def summary_tag(layers, inherited_share, cka, classes) -> str:
    """The ``transfer.summary`` tag value (version 1, compact JSON under MLflow's 8000-character limit):
    per-layer lists (non-finite entries as null), the mean of the finite CKA entries, the label space's
    hash and size. Too long a value drops layers from the end of the lists rather than fail."""
    layers = [str(x) for x in layers]
    pad = [None] * len(layers)  # a list shorter than the layers (a CKA matrix of fewer rows) ends in nulls
    share = ([_finite_or_none(x) for x in inherited_share] + pad)[:len(layers)]
    cka = ([_finite_or_none(x) for x in cka] + pad)[:len(layers)]
    finite = [x for x in cka if x is not None]
    classes = list(classes)
    head = {"v": SUMMARY_VERSION, "cka_mean": sum(finite) / len(finite) if finite else None,
            "classes_hash": classes_hash(classes), "n_classes": len(classes)}
    n = len(layers)
    while True:
        text = json.dumps({**head, "layers": layers[:n], "inherited_share": share[:n], "cka": cka[:n]},
                          separators=(",", ":"))
        if len(text) < SUMMARY_LIMIT or n == 0:
            return text
        n = max(0, n - max(1, n // 10))


def parse_summary(text) -> dict | None:
    """The ``transfer.summary`` tag as ``{"layers", "inherited_share", "cka", "cka_mean", "classes_hash",
    "n_classes"}``; None for an absent, damaged or unknown-version tag (tags are free text)."""
    if not isinstance(text, str) or not text or len(text) > SUMMARY_LIMIT:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get("v") != SUMMARY_VERSION:
        return None
    layers, share, cka = found.get("layers"), found.get("inherited_share"), found.get("cka")
    if not all(isinstance(x, list) for x in (layers, share, cka)) or not len(layers) == len(share) == len(cka):
        return None
    digest, n_classes = found.get("classes_hash"), found.get("n_classes")
    if not isinstance(digest, str) or len(digest) != 12 or not all(c in "0123456789abcdef" for c in digest):
        return None
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 0:
        return None
    return {"layers": [str(x) for x in layers], "inherited_share": [_finite_or_none(x) for x in share],
            "cka": [_finite_or_none(x) for x in cka], "cka_mean": _finite_or_none(found.get("cka_mean")),
            "classes_hash": digest, "n_classes": n_classes}


def _run_id_or_none(value) -> str | None:
    """A run id read from a tag, or None when the tag holds anything else."""
    try:
        return check_run_id(value)
    except RunLookupError:
        return None


def _tag_classes_hash(text) -> str | None:
    """The hash of a run's ``transfer.classes`` tag (a JSON list), or None when it is absent or damaged."""
    try:
        classes = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return classes_hash(classes) if isinstance(classes, list) else None


@dataclass(frozen=True)
class _Run:
    """The parts of a run the listing reads (from an MLflow entity or the REST API's JSON alike)."""

    run_id: str
    name: str | None
    experiment_id: str
    status: str
    tags: dict
    params: dict
    metrics: dict
    start_time: int | None = None

    @staticmethod
    def of_entity(run) -> _Run:
        return _Run(run.info.run_id, run.info.run_name, run.info.experiment_id, run.info.status,
                    run.data.tags, run.data.params, run.data.metrics, run.info.start_time)

    @staticmethod
    def of_json(run: dict) -> _Run:
        info, data = run.get("info", {}), run.get("data", {})

        def pairs(key: str) -> dict:
            return {x["key"]: x.get("value") for x in data.get(key, []) if isinstance(x, dict) and "key" in x}

        start = info.get("start_time")
        return _Run(str(info.get("run_id") or info.get("run_uuid")), info.get("run_name"),
                    str(info.get("experiment_id")), str(info.get("status")), pairs("tags"), pairs("params"),
                    pairs("metrics"), int(start) if str(start).isdigit() else None)


SEARCH_ENDPOINT = "/api/2.0/mlflow/runs/search"


def _search_pages(client, uri: str, experiment_id: str, query: str, page_size: int):
    """Pages of `_Run`s matching ``query``, newest first. An ``http(s)`` server is asked through MLflow's
    REST client (its credentials, timeouts and retries) and its JSON read as it is: turning a page into
    protobuf messages and entities costs the client as much as the server's search (see
    benchmarks/results_compare.txt); any other store through ``client``."""
    token = None
    if uri.startswith(("http://", "https://")):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        creds = get_default_host_creds(uri)
        while True:
            body = {"experiment_ids": [experiment_id], "filter": query, "max_results": page_size,
                    "order_by": ["attributes.start_time DESC"], **({"page_token": token} if token else {})}
            response = verify_rest_response(http_request(creds, SEARCH_ENDPOINT, "POST", json=body), SEARCH_ENDPOINT)
            found = response.json()
            yield [_Run.of_json(r) for r in found.get("runs", [])]
            token = found.get("next_page_token")
            if not token:
                return
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=page_size,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        yield [_Run.of_entity(r) for r in page]
        token = page.token
        if not token:
            return


def _search(client, uri: str, experiment_id: str, query: str, page_size: int,
            limit: int | None = None) -> list[_Run]:
    """Every run matching ``query``, newest first, ``page_size`` per request (at most ``limit``); a store that
    does not answer is `TrackingUnavailableError` (`bundles.call_store`)."""
    from .bundles import call_store

    def collect() -> list[_Run]:
        runs = []
        for page in _search_pages(client, uri, experiment_id, query, page_size):
            runs.extend(page)
            if limit is not None and len(runs) >= limit:
                return runs[:limit]
        return runs

    return call_store(uri, collect)


def _setting(params: dict) -> dict:
    return {k: v for k, v in sorted(params.items()) if k not in COUNT_PARAMS}


def _row(target: _Run, diagnostics: _Run | None, latest: _Run | None, summary: dict | None) -> dict:
    """One row: the target run ``target``, its latest FINISHED diagnostics run ``diagnostics`` (or None)
    and its latest diagnostics run of any status ``latest`` (or None)."""
    t, tm = target.tags, target.metrics
    run_id = target.run_id
    row = {"target_run_id": run_id,
           "diagnostics_run_id": diagnostics.run_id if diagnostics is not None else None,
           "source_run_id": _run_id_or_none(t.get(TAGS.source_run_id)),
           "experiment_id": target.experiment_id, "name": target.name,
           "target_status": target.status,
           "diagnostics_status": (diagnostics or latest).status if (diagnostics or latest) else None,
           "model": t.get(TAGS.model), "classes_hash": _tag_classes_hash(t.get(TAGS.classes)),
           "source_domain": t.get(TAGS.source_domain), "target_domain": t.get(TAGS.target_domain),
           "method": t.get(TAGS.method) or DEFAULT_METHOD, "sweep_id": _run_id_or_none(t.get(TAGS.sweep_id)),
           "setting": _setting(target.params),
           **{k: _finite_or_none(tm.get(m)) for k, m in TARGET_METRICS.items()},
           **{k: None for k in OUTCOMES if k not in TARGET_METRICS},
           "layers": [], "inherited_share": [], "cka": [],
           "command": diagnose_command(run_id) if diagnostics is None else None}
    if diagnostics is not None:
        dm = diagnostics.metrics
        row.update({k: _finite_or_none(dm[m]) for k, m in DIAGNOSTICS_METRICS.items() if m in dm})
        if summary is not None:
            row.update({k: summary[k] for k in ("layers", "inherited_share", "cka")})
            row["classes_hash"] = summary["classes_hash"]
            if row["cka_mean"] is None:
                row["cka_mean"] = summary["cka_mean"]
    return {k: row[k] for k in ROW_KEYS}


def _comparable(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The largest group of rows of one (model, classes_hash) (ties: the newest row's), and the others with
    the reason they were left out."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:  # newest first: the first group seen holds the newest row
        groups.setdefault((row["model"], row["classes_hash"]), []).append(row)
    if not groups:
        return [], []
    kept_key = max(groups, key=lambda k: len(groups[k]))  # max keeps the first of equals
    model, digest = kept_key
    left_out = []
    for row in rows:
        key = (row["model"], row["classes_hash"])
        if key == kept_key:
            continue
        why = []
        if row["model"] != model:
            why.append(f"model {row['model']!r}, not {model!r}")
        if row["classes_hash"] != digest:
            why.append("another target label space" if row["classes_hash"] else "no readable target label space")
        left_out.append({"target_run_id": row["target_run_id"], "name": row["name"],
                         "reason": "; ".join(why) + f" (the {len(groups[kept_key])} compared runs share one)"})
    return groups[kept_key], left_out


def _differing(rows: list[dict]) -> list[str]:
    keys = {k for r in rows for k in r["setting"]}
    return sorted(k for k in keys if len({r["setting"].get(k) for r in rows}) > 1)


def list_compare_rows(experiment_id: str, *, sweep_id: str | None = None, tracking_uri: str | None = None,
                      page_size: int = 1000, max_rows: int | None = None, newest: int | None = None,
                      cache: MutableMapping[str, dict | None] | None = None) -> CompareListing:
    """The compare listing of experiment ``experiment_id`` (only target runs of sweep ``sweep_id`` when given).

    Args:
        page_size: runs per search request.
        max_rows: at most this many target runs (the newest).
        newest: a quick first page (``partial`` unless it holds fewer): the newest ``newest`` target runs, joined with the
            diagnostics runs started since the oldest of them — every diagnostics run of a target starts after
            it, so each row's join is the whole listing's; settings that differ and comparability are those of
            these rows.
        cache: diagnostics run id -> its parsed summary (`parse_summary`), read and filled for FINISHED runs
            only (a finished run's tags do not change; a running one's may).
    Raises:
        RunLookupError: an experiment or sweep id that is not a well-formed id.
        TrackingUnavailableError: the server does not answer.
    """
    import mlflow

    from .bundles import store_client

    experiment_id = check_run_id(experiment_id, "valid experiment id")
    if sweep_id is not None:
        sweep_id = check_run_id(sweep_id, "sweep run id")
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = store_client(tracking_uri)
    target_query = f"tags.`{TAGS.role}` = 'target'"
    if sweep_id is not None:  # checked: letters, digits, '_' and '-' only, no quote ends the string
        target_query += f" AND tags.`{TAGS.sweep_id}` = '{sweep_id}'"
    diagnostics_query = f"tags.`{TAGS.role}` = 'diagnostics'"
    first: list | None = None
    if newest is not None:  # the targets first: the diagnostics search starts at the oldest one's start
        first = _search(client, uri, experiment_id, target_query, min(page_size, newest), newest)
        starts = [r.start_time for r in first if r.start_time is not None]
        if starts and len(starts) == len(first):
            diagnostics_query += f" AND attributes.start_time >= {min(starts)}"
    searches: dict[str, Callable[[], list]] = {
        "target": lambda: first if first is not None else _search(client, uri, experiment_id, target_query,
                                                                   page_size, max_rows),
        "diagnostics": lambda: _search(client, uri, experiment_id, diagnostics_query, page_size),
        "sweep": lambda: _search(client, uri, experiment_id, f"tags.`{TAGS.role}` = 'sweep'", page_size),
    }
    with ThreadPoolExecutor(len(searches)) as pool:  # the searches wait on the server, not on this process
        futures = {k: pool.submit(f) for k, f in searches.items()}
        found = {k: f.result() for k, f in futures.items()}
    finished, latest = {}, {}
    for run in found["diagnostics"]:  # newest first: the first seen per target is the latest
        target = _run_id_or_none(run.tags.get(TAGS.target_run_id))
        if target is None:
            continue
        latest.setdefault(target, run)
        if run.status == "FINISHED":
            finished.setdefault(target, run)
    rows = []
    for target in found["target"]:
        diagnostics = finished.get(target.run_id)
        summary = None
        if diagnostics is not None:
            if cache is not None and diagnostics.run_id in cache:
                summary = cache[diagnostics.run_id]
            else:
                summary = parse_summary(diagnostics.tags.get(TAGS.summary))
                if cache is not None:
                    cache[diagnostics.run_id] = summary
        rows.append(_row(target, diagnostics, latest.get(target.run_id), summary))
    sweeps = [{"run_id": r.run_id, "name": r.name} for r in found["sweep"] if _run_id_or_none(r.run_id)]
    # fewer target runs than asked for: the first page is all of them
    return listing_from_rows(rows, sweeps, partial=newest is not None and len(found["target"]) >= newest)


def listing_from_rows(rows: list[dict], sweeps: list[dict] | tuple = (), *, partial: bool = False) -> CompareListing:
    """The listing of ``rows`` (newest first, keys `ROW_KEYS`): the comparable group kept, the rest left out
    with the reason, the settings that differ among the kept rows."""
    kept, left_out = _comparable(rows)
    return CompareListing(rows=kept, settings=_differing(kept), left_out=left_out, sweeps=list(sweeps),
                          partial=partial)
