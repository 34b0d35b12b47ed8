"""Run-pair browser: pick an experiment, then a diagnosed pair."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import panel as pn

from ..readers import incomplete

__all__ = ["HOW_TO_DIAGNOSE", "pairs_frame", "pairs_table"]

HOW_TO_DIAGNOSE = ("No diagnosed pair in this experiment yet. Diagnose a fine-tuned run with\n\n"
                   "    mlflow-transfer diagnose --target-run-id <target run id>\n\n"
                   "(or `mlflow run . -e diagnose -P target_run_id=<target run id>`), or train and "
                   "diagnose the built-in pair with `make demo`.")


def _setting(row: dict) -> str:
    parts = [f"{row.get('source_domain') or '?'} → {row.get('target_domain') or '?'}", row.get("model") or ""]
    if row.get("frozen_layers") not in (None, "", "[]"):
        parts.append(f"frozen {row['frozen_layers']}")
    return ", ".join(p for p in parts if p)


def pairs_frame(pairs: list[dict]) -> pd.DataFrame:
    """Rows of the pair table: recipe, setting, date, target accuracy, transferability score, the source
    model's LogME and LEEP estimated before fine-tuning (issue 15; empty for older runs), run id, and
    whether its bundle is complete (a killed or running diagnose is listed as incomplete)."""
    return pd.DataFrame({
        "recipe": [p.get("recipe") or "" for p in pairs],
        "setting": [_setting(p) for p in pairs],
        "date": [dt.datetime.fromtimestamp(p["start_time"] / 1000).strftime("%Y-%m-%d %H:%M")
                 if p.get("start_time") else "" for p in pairs],
        "target accuracy": [p.get("target_accuracy") for p in pairs],
        "transferability": [p.get("transferability_score") for p in pairs],
        "LogME": [p.get("logme") for p in pairs],
        "LEEP": [p.get("leep") for p in pairs],
        "diagnostics run": [p["diagnostics_run_id"] for p in pairs],
        "bundle": [f"incomplete ({p['status']})" if incomplete(p) else "complete" for p in pairs],
    }, columns=["recipe", "setting", "date", "target accuracy", "transferability", "LogME", "LEEP",
                "diagnostics run", "bundle"])


def pairs_table(pairs: list[dict], selected: str = "") -> pn.widgets.Tabulator:
    """Tabulator of :func:`pairs_frame` (paged, one row selectable; the selected pair highlighted)."""
    frame = pairs_frame(pairs)
    rows = [i for i, r in enumerate(frame["diagnostics run"]) if r == selected]
    return pn.widgets.Tabulator(frame, show_index=False, selectable=1, disabled=True, selection=rows,
                                pagination="local", page_size=10, layout="fit_data_stretch",
                                formatters={"target accuracy": {"type": "money", "precision": 3},
                                            "transferability": {"type": "money", "precision": 3},
                                            "LogME": {"type": "money", "precision": 3},
                                            "LEEP": {"type": "money", "precision": 3}},
                                name="pairs", sizing_mode="stretch_width")
