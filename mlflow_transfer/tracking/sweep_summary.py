"""The summary of a sweep (issue 15), logged on its parent run for MLflow's own UI to show.

`write_sweep_summary` reads the sweep's target runs and the diagnostics run of each: the runs of every setting
the parent lists in ``sweep/settings.json`` (by sweep key, in the whole experiment: a re-run under `mlflow run`
is a new parent whose skipped settings ran under an earlier one), else the parent's child target runs (tag
``transfer.sweep_id`` = the parent, role ``target``). It logs on the parent:

- ``sweep/summary.csv`` and ``sweep/summary.html``: one row per setting (``transfer.sweep_setting``; a
  setting run more than once, e.g. failed then redone, is the latest FINISHED run, else the latest):
  the setting's keys, status (the target run's) and diagnostics status (its latest diagnostics run's;
  numbers are read from a FINISHED one only), target accuracy (the diagnostics' ``target_val_accuracy``; without a
  diagnostics run, the target run's ``best_acc_target_val``), the realised ``transferability_score``,
  ``logme`` and ``leep`` (the target run's, estimated before fine-tuning), the inherited-weight share
  per analysed layer (the diagnostics run's ``inherited_weight_share`` history, step = depth), and
  ``dir_output`` / ``dir_feature`` where robustness was diagnosed;
- ``sweep/chart.png``: realised transferability against LogME and against LEEP, and target accuracy per
  setting (points and bars numbered by the table's ``#`` column);
- metrics ``spearman_logme`` and ``spearman_leep``: the rank correlation (scipy) of each estimate with the
  realised score over the finished settings that have both; NaN in the returned dict with fewer than 3
  such settings or a constant column, where a rank correlation means nothing (then not logged, unless
  it replaces a value an earlier summary of the sweep logged).

Setting values are user text: the HTML escapes every cell, the CSV quotes a text cell a spreadsheet would read as a
formula (OWASP's CSV injection rule: a leading ``'``), and the chart labels points by row number only.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from ..errors import RunLookupError
from ..tags import TAGS
from .lookup import get_run

SUMMARY_DIR = "sweep"
SETTINGS_FILE = f"{SUMMARY_DIR}/settings.json"  # [{"setting": {...}, "sweep_key": ...}], written by the sweep
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
OUTCOMES = ("status", "diagnostics_status", "target_accuracy", "transferability_score", "logme", "leep")
DIR_METRICS = ("dir_output", "dir_feature")
ESTIMATES = ("logme", "leep")
MIN_RANKED = 3  # a rank correlation of two points is ±1 whatever the estimates are


def _latest(runs: list, key) -> dict:
    """Per ``key(run)``, the latest FINISHED run, else the latest run."""
    chosen: dict = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        k = key(run)
        if k not in chosen or run.info.status == "FINISHED" or chosen[k].info.status != "FINISHED":
            chosen[k] = run
    return chosen


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _setting_keys(client: MlflowClient, parent_id: str) -> set[str] | None:
    """The sweep keys the parent's ``sweep/settings.json`` lists (read through ``client``'s store); None without a
    readable one."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            listed = json.loads(Path(client.download_artifacts(parent_id, SETTINGS_FILE, tmp)).read_text())
        except Exception:  # noqa: BLE001 — absent (an older parent), damaged or unreadable: its children make the summary
            return None
    if not isinstance(listed, list):
        return None
    return {str(e["sweep_key"]) for e in listed if isinstance(e, dict) and "sweep_key" in e}


def _setting(run) -> dict:
    raw = run.data.tags.get(TAGS.sweep_setting)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = {"setting": raw}  # written by hand or damaged: shown as text, never interpreted
    return value if isinstance(value, dict) else {"setting": raw}


def _row(client: MlflowClient, target, diagnostics) -> dict:
    metrics = target.data.metrics
    row = {**{f"setting.{k}": v if isinstance(v, (int, float, str)) or v is None else json.dumps(v)
              for k, v in sorted(_setting(target).items())},
           "status": target.info.status,
           "diagnostics_status": diagnostics.info.status if diagnostics is not None else None,
           "target_run_id": target.info.run_id,
           "diagnostics_run_id": diagnostics.info.run_id if diagnostics is not None else None,
           "target_accuracy": metrics.get("best_acc_target_val"), "transferability_score": None,
           **{k: metrics.get(k) for k in ESTIMATES}}
    if diagnostics is not None and diagnostics.info.status == "FINISHED":  # a failed one's metrics may be partial
        diag = diagnostics.data.metrics
        if "target_val_accuracy" in diag:
            row["target_accuracy"] = diag["target_val_accuracy"]
        row["transferability_score"] = diag.get("transferability_score")
        row.update({k: diag[k] for k in DIR_METRICS if k in diag})
        layers = _layers(diagnostics)
        for m in client.get_metric_history(diagnostics.info.run_id, "inherited_weight_share"):
            name = layers[m.step] if 0 <= m.step < len(layers) else f"depth {m.step}"
            row[f"inherited_weight_share[{m.step}:{name}]"] = m.value
    return row


def _layers(run) -> list[str]:
    try:
        layers = json.loads(run.data.tags.get(TAGS.layers, "[]"))
    except ValueError:
        return []
    return [str(x) for x in layers] if isinstance(layers, list) else []


def _columns(rows: list[dict]) -> list[str]:
    settings = sorted({k for r in rows for k in r if k.startswith("setting.")})
    shares = sorted({k for r in rows for k in r if k.startswith("inherited_weight_share[")},
                    key=lambda k: int(k[len("inherited_weight_share["):].split(":", 1)[0]))
    dirs = [k for k in DIR_METRICS if any(k in r for r in rows)]
    return ["#", *settings, *OUTCOMES, *shares, *dirs, "target_run_id", "diagnostics_run_id"]


def spearman(rows: list[dict], estimate: str) -> float:
    """Spearman's ρ of ``estimate`` with the realised ``transferability_score`` over the FINISHED rows that
    have both (finite); NaN with fewer than `MIN_RANKED` or a constant column."""
    from scipy.stats import spearmanr

    pairs = [(r[estimate], r["transferability_score"]) for r in rows if r["status"] == "FINISHED"
             and _finite(r.get(estimate)) and _finite(r.get("transferability_score"))]
    if len(pairs) < MIN_RANKED or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return math.nan
    return float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _csv(rows: list[dict], columns: list[str], path: Path) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: _csv_cell(r.get(c)) for c in columns} for r in rows)


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value  # text, not a formula, when a spreadsheet opens the file
    return value


def _cell(value, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not column.startswith("setting."):  # a setting (lr 1e-5) as given
        return "" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _html(parent, rows: list[dict], columns: list[str], rho: dict, path: Path) -> None:
    name = html.escape(parent.info.run_name or parent.info.run_id)

    def fmt(v):
        return "n/a (fewer than 3 finished settings with both, or a constant column)" if math.isnan(v) else f"{v:+.3f}"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c), c)}</td>" for c in columns) + "</tr>" for r in rows)
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep summary</title><style>"
        "body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}</style></head><body>"
        f"<h2>Sweep {name}: {len(rows)} setting(s)</h2>"
        "<p>LogME and LEEP are estimated before fine-tuning from the source model on the target training data "
        "(higher predicts better transfer); the transferability score is realised (the fine-tuned target "
        "model's best target accuracy minus the source model's). Spearman rank correlation with the realised "
        f"score over finished settings: LogME {fmt(rho['spearman_logme'])}, LEEP {fmt(rho['spearman_leep'])}.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>", encoding="utf-8")


def _chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; the figure goes to a file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, label in ((axes[0], "logme", "LogME"), (axes[1], "leep", "LEEP")):
        points = [(r["#"], r[key], r["transferability_score"]) for r in rows
                  if _finite(r.get(key)) and _finite(r.get("transferability_score"))]
        ax.scatter([p[1] for p in points], [p[2] for p in points], color="#1f77b4")
        for number, x, y in points:
            ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(xlabel=f"{label} (before fine-tuning)", ylabel="transferability score (realised)",
               title=f"Realised transferability vs {label}")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.ticklabel_format(axis="x", useOffset=False)
        if not points:
            ax.text(0.5, 0.5, "no setting with both", transform=ax.transAxes, ha="center", color="#666")
    numbers = [r["#"] for r in rows]
    acc = [r["target_accuracy"] if _finite(r.get("target_accuracy")) else 0.0 for r in rows]
    colors = ["#2a8a2a" if r["status"] == "FINISHED" else "#c0392b" for r in rows]
    axes[2].bar([str(n) for n in numbers], acc, color=colors)
    for i, r in enumerate(rows):  # a setting without an accuracy has no bar: say why
        if not _finite(r.get("target_accuracy")):
            axes[2].text(i, 0.02, r["status"].lower(), rotation=90, ha="center", va="bottom", color="#c0392b")
    axes[2].set(xlabel="setting (# in summary.csv; red: not finished)", ylabel="target accuracy", ylim=(0, 1),
                title="Target accuracy per setting")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_sweep_summary(parent_run_id: str, *, client: MlflowClient | None = None) -> dict:
    """Summarise the sweep whose parent run is ``parent_run_id`` onto that run (see the module docstring).

    Returns ``{"rows": [...], "columns": [...], "spearman_logme": float, "spearman_leep": float}`` (NaN:
    not enough finished settings). Raises `RunLookupError` for a run that does not exist or is no
    sweep's parent."""
    client = client or MlflowClient()
    parent = get_run(parent_run_id, client)
    if parent.data.tags.get(TAGS.role) != "sweep":
        raise RunLookupError(f"Expected the parent run of a sweep (tag {TAGS.role} = 'sweep'); run {parent_run_id} "
                             f"has role {parent.data.tags.get(TAGS.role)!r}. Pass the sweep's parent run id "
                             "(`mlflow-transfer sweep` prints it).")
    pid, experiment = parent.info.run_id, parent.info.experiment_id
    keys = _setting_keys(client, pid)
    if keys is None:
        targets = _search(client, experiment, f"tags.`{TAGS.sweep_id}` = '{pid}' AND tags.`{TAGS.role}` = 'target'")
    else:
        targets = [r for r in _search(client, experiment, f"tags.`{TAGS.role}` = 'target'")
                   if r.data.tags.get(TAGS.sweep_key) in keys]
    chosen = _latest(targets, lambda r: json.dumps(_setting(r), sort_keys=True))
    rows = []
    for target in sorted(chosen.values(), key=lambda r: json.dumps(_setting(r), sort_keys=True)):
        found = _search(client, experiment, f"tags.`{TAGS.role}` = 'diagnostics' AND "
                                            f"tags.`{TAGS.target_run_id}` = '{target.info.run_id}'")
        diagnostics = _latest(found, lambda r: 0).get(0)
        rows.append(_row(client, target, diagnostics))
    for number, row in enumerate(rows, 1):
        row["#"] = number
    columns = _columns(rows)
    rho = {f"spearman_{k}": spearman(rows, k) for k in ESTIMATES}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _csv(rows, columns, folder / "summary.csv")
        _html(parent, rows, columns, rho, folder / "summary.html")
        _chart(rows, folder / "chart.png")
        for name in ("summary.csv", "summary.html", "chart.png"):
            client.log_artifact(pid, str(folder / name), SUMMARY_DIR)
    for key, value in rho.items():  # NaN only over an earlier value, which a re-run's summary replaces
        if math.isfinite(value) or key in parent.data.metrics:
            client.log_metric(pid, key, value)
    return {"rows": rows, "columns": columns, **rho}
