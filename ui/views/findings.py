"""The findings list (issue 16): a pair's notable phenomena, best first, each with its evidence and what
shows it — as Panel panes with a button per finding (the Statistics tab, which opens the finding's tab
and state) and as static HTML (``report.html``, the state as text). Stateless: functions of
`PairBundle.findings()`; every string from the bundle (titles, class and layer names) is escaped."""

from __future__ import annotations

from collections.abc import Callable

import panel as pn

from .text import escape_html

__all__ = ["NO_FINDINGS", "NOT_RECORDED", "evidence_text", "findings_html", "findings_panel", "state_text"]

NOT_RECORDED = ("No findings recorded: this bundle was diagnosed before findings existed. Diagnose the pair again "
                "(`mlflow-transfer diagnose`) for them.")
NO_FINDINGS = "No findings: nothing in this pair passed a finding's threshold (README, \"Findings\")."
_STYLE = ("<style>.findings li{margin:.15em 0}.findings .evidence{color:#555;font-size:.85em}"
          ".findings .shows{color:#777;font-size:.8em}</style>")


def _value(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def evidence_text(evidence: dict) -> str:
    """``name = value`` pairs, plain text (escape it where rendered)."""
    return "; ".join(f"{k.replace('_', ' ')} = {_value(v)}" for k, v in evidence.items())


def state_text(finding: dict) -> str:
    """Where the finding shows, plain text: the tab and the state it sets (escape it where rendered)."""
    state = finding.get("state") or {}
    parts = [f"{finding.get('tab', '?')} tab"]
    classes = state.get("classes")
    if isinstance(classes, list):
        parts.append("classes: " + (", ".join(str(c) for c in classes) if classes else "all"))
    if "layer_from" in state or "layer_to" in state:
        parts.append(f"layers {state.get('layer_from', '?')}–{state.get('layer_to', '?')}")
    if state.get("neuron"):
        parts.append(f"neuron {state['neuron']}")
    parts += [f"{k} = {_value(v)}" for k, v in state.items()
              if k not in ("classes", "layer_from", "layer_to", "neuron")]
    return " · ".join(parts)


def _item_html(finding: dict) -> str:
    return (f"<b>{escape_html(finding['title'])}</b> <span class='shows'>(score {finding['score']:.3g})</span>"
            f"<div class='evidence'>{escape_html(evidence_text(finding['evidence']))}</div>")


def findings_html(findings: list[dict] | None) -> str:
    """The static list (``report.html``): each finding's title, evidence and where the app shows it."""
    if findings is None:
        return f"<p class='note'>{escape_html(NOT_RECORDED)}</p>"
    if not findings:
        return f"<p class='note'>{escape_html(NO_FINDINGS)}</p>"
    items = "".join(f"<li>{_item_html(f)}<div class='shows'>Shown in the app: {escape_html(state_text(f))}</div></li>"
                    for f in findings)
    return f"{_STYLE}<ol class='findings'>{items}</ol>"


def findings_panel(findings: list[dict] | None, on_open: Callable[[dict], None],
                   known: Callable[[str], bool] = lambda tab: True) -> pn.viewable.Viewable:
    """The app's list (pane ``findings``): per finding its title, evidence and a button ``Show in <tab>``
    calling ``on_open(finding)`` (disabled, "No such tab", when ``known(tab)`` is false); a note without
    findings or for an older bundle."""
    if findings is None:
        return pn.pane.HTML(f"<div class='findings-note'>{escape_html(NOT_RECORDED)}</div>", name="findings")
    if not findings:
        return pn.pane.HTML(f"<div class='findings-note'>{escape_html(NO_FINDINGS)}</div>", name="findings")
    rows = []
    for i, f in enumerate(findings):
        ok = known(f["tab"])
        button = pn.widgets.Button(label=f"Show in {f['tab']}" if ok else "No such tab", color="light", width=150,
                                   css_classes=["finding-open"], margin=(8, 5, 0, 5), disabled=not ok)
        button.on_click(lambda _event, f=f: on_open(f))
        rows.append(pn.Row(button, pn.pane.HTML(f"{_STYLE}<div class='findings' data-finding='{i}'>"
                                                f"{_item_html(f)}</div>", sizing_mode="stretch_width"),
                           sizing_mode="stretch_width"))
    return pn.Column(pn.pane.HTML(f"<b>Findings</b> ({len(findings)}, best first)"), *rows, name="findings",
                     sizing_mode="stretch_width")
