"""Findings (issue 16): the notable phenomena of one diagnosed pair, ranked, each with its evidence and the
app view (tab + URL state) that shows it — computed from the pair's bundle, so what they say is what the
bundle holds.

`compute_findings(bundle)` reads a `PairBundle` (duck-typed: this module imports no reader, so `records`
can import `check_findings` from here without a cycle); `findings_record` wraps the list with the
thresholds it used; `check_findings` validates a stored record for `PairBundle.findings`. The writer side
(`writer.write_pair_bundle`) computes them on the bundle it has just written and appends the record.

Kinds, each firing on one documented threshold (README "Findings"):

- ``negative_transfer``: the realised transferability score (manifest ``scores``) < 0.
- ``class_negative_transfer``: per class, the source model's accuracy on the class's target validation
  instances exceeds the fine-tuned model's by more than `CLASS_LOSS_ABOVE` (classes with at least
  `MIN_SUPPORT` instances and both accuracies defined).
- ``largest_gain`` / ``largest_loss``: the class with the largest accuracy difference (target − source)
  either way, when beyond `CLASS_CHANGE_ABOVE` (same class filter).
- ``inheritance_below_half``: the first depth whose inherited-weight share (``comparison/layers``, all
  classes) is below `INHERITED_SHARE_BELOW`.
- ``source_only_neuron`` / ``target_only_neuron``: the target model's most domain-specific neuron either
  way. Importance is the paper's (§5.3.1): per instance, the neuron's ascending rank among the layer's
  neurons by conductance (ties averaged), here as a percentile in [0, 1] averaged over a domain's rows.
  Source-only: among the layer's top ``options.top_fraction`` on source-domain rows, not on target rows,
  with mean percentile on source minus on target > `DOMAIN_SPECIFIC_ABOVE`. The target model is the one
  with conductance on both domains (the source model's source-domain rows are not computed); its
  source-domain rows are the domain classifiers' sample (each domain capped at `RANK_ROWS`). The domain classifier's SVM weights are not
  used: its columns are the target-domain important neurons only, so a source-only neuron is not among them.
- ``forgotten_source``: on the source validation set, the source model's accuracy minus the target model's
  > `FORGOTTEN_ABOVE` (classes both know, weighted by support).
- ``unstable_class``: per class, the lowest bootstrap stability (``neurons/stability``: mean Jaccard of the
  important set with its recomputation on resamples) over both models and all layers < `STABILITY_BELOW`.

Ranking: each finding has an *effect* in [0, 1]-like units (accuracy, share, percentile or Jaccard
distance; larger = more notable) and ``score = effect / UNITS[kind]``; a unit is the effect that counts as
one (the kind's threshold where that is positive; one accuracy point for overall negative transfer,
which has threshold 0). Ties: `KINDS` order, then title. At most `MAX_PER_KIND` of a per-class kind are
kept (the highest scores); the record counts the rest in ``left_out``.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np

__all__ = ["CLASS_CHANGE_ABOVE", "CLASS_LOSS_ABOVE", "DOMAIN_SPECIFIC_ABOVE", "FINDINGS", "FORGOTTEN_ABOVE",
           "INHERITED_SHARE_BELOW", "KINDS", "MAX_PER_KIND", "MIN_SUPPORT", "NEGATIVE_TRANSFER_BELOW",
           "STABILITY_BELOW", "THRESHOLDS", "UNITS", "check_findings", "compute_findings", "findings_record",
           "rank_percentiles"]

FINDINGS = "findings"  # the record: findings.json at the bundle root
RECORD_VERSION = 1

NEGATIVE_TRANSFER_BELOW = 0.0   # transferability score (target best − source best accuracy)
CLASS_LOSS_ABOVE = 0.05         # source − target accuracy on one class's target validation instances
CLASS_CHANGE_ABOVE = 0.02       # |target − source| of the class with the largest gain / loss
MIN_SUPPORT = 5                 # target validation instances a class needs for a class-level finding
INHERITED_SHARE_BELOW = 0.5     # inherited-weight share at a depth (all classes)
DOMAIN_SPECIFIC_ABOVE = 0.5     # mean rank percentile on one domain minus on the other
FORGOTTEN_ABOVE = 0.10          # source − target model accuracy on the source validation set
STABILITY_BELOW = 0.5           # mean Jaccard of an important set with its bootstrap recomputations
MAX_PER_KIND = 5                # per-class kinds: the highest scores kept
RANK_ROWS = 500                 # rows per domain the neuron percentiles rest on at most (a seeded sample beyond)
THRESHOLDS = {"negative_transfer_below": NEGATIVE_TRANSFER_BELOW, "class_loss_above": CLASS_LOSS_ABOVE,
              "class_change_above": CLASS_CHANGE_ABOVE, "min_support": MIN_SUPPORT,
              "inherited_share_below": INHERITED_SHARE_BELOW, "domain_specific_above": DOMAIN_SPECIFIC_ABOVE,
              "forgotten_above": FORGOTTEN_ABOVE, "stability_below": STABILITY_BELOW, "max_per_kind": MAX_PER_KIND,
              "rank_rows": RANK_ROWS}

KINDS = ("negative_transfer", "class_negative_transfer", "largest_loss", "largest_gain", "forgotten_source",
         "inheritance_below_half", "unstable_class", "source_only_neuron", "target_only_neuron")
# effect per score point (module docstring): the threshold where it is positive
UNITS = {"negative_transfer": 0.01, "class_negative_transfer": CLASS_LOSS_ABOVE, "largest_loss": CLASS_LOSS_ABOVE,
         "largest_gain": CLASS_LOSS_ABOVE, "forgotten_source": FORGOTTEN_ABOVE,
         "inheritance_below_half": 1 - INHERITED_SHARE_BELOW, "unstable_class": 1 - STABILITY_BELOW,
         "source_only_neuron": DOMAIN_SPECIFIC_ABOVE, "target_only_neuron": DOMAIN_SPECIFIC_ABOVE}
PER_CLASS = ("class_negative_transfer", "unstable_class")
STATISTICS, NETWORK = "Statistics", "Network"  # the app's tab titles a finding opens


# --- computing ------------------------------------------------------------------------------------------

def compute_findings(bundle) -> tuple[list[dict], dict[str, int]]:
    """The findings of ``bundle`` (a `PairBundle`), best first, and per kind how many were left out
    (`MAX_PER_KIND`). A record the bundle lacks (an older or partial bundle) only skips its kinds."""
    found = [*_negative_transfer(bundle), *_class_changes(bundle), *_forgotten(bundle), *_inheritance(bundle),
             *_unstable(bundle), *_domain_specific(bundle)]
    found.sort(key=_order)
    kept, left_out = [], {}
    for f in found:
        if f["kind"] in PER_CLASS and sum(k["kind"] == f["kind"] for k in kept) >= MAX_PER_KIND:
            left_out[f["kind"]] = left_out.get(f["kind"], 0) + 1
        else:
            kept.append(f)
    return kept, left_out


def findings_record(bundle) -> dict:
    """The ``findings`` record of ``bundle``: ``{"version", "findings", "left_out", "thresholds",
    "units", "seconds"}``."""
    start = time.perf_counter()
    found, left_out = compute_findings(bundle)
    return {"version": RECORD_VERSION, "findings": found, "left_out": left_out, "thresholds": dict(THRESHOLDS),
            "units": dict(UNITS), "seconds": round(time.perf_counter() - start, 4)}


def _order(f: dict) -> tuple:
    return -f["score"], KINDS.index(f["kind"]), f["title"]


def _finding(kind: str, effect: float, title: str, evidence: dict, tab: str, state: dict) -> dict:
    numbers = {k: _number(v) for k, v in evidence.items()}  # a non-finite number is no evidence (nor valid JSON)
    return {"kind": kind, "title": title, "score": round(float(effect) / UNITS[kind], 6),
            "evidence": {k: v for k, v in numbers.items() if isinstance(v, str) or math.isfinite(v)},
            "tab": tab, "state": state}


def _number(v):
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    return round(float(v), 4)


def _name(text: str, limit: int = 60) -> str:
    """A class or layer name as one short plain line (titles are one line; the app escapes them)."""
    one = re.sub(r"\s+", " ", str(text)).strip()
    return one if len(one) <= limit else one[:limit - 1] + "…"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _span(bundle, depth: int) -> dict:
    """The Network tab's layer range showing ``depth`` and the links out of it (the last layer: into it)."""
    top = len(bundle.layers) - 1
    lo, hi = (depth, depth + 1) if depth < top else (max(depth - 1, 0), depth)
    return {"layer_from": lo, "layer_to": hi}


def _negative_transfer(bundle) -> list[dict]:
    score, _ = bundle.transferability()
    if score is None or not math.isfinite(score) or not score < NEGATIVE_TRANSFER_BELOW:
        return []
    evidence = {"transferability_score": score}
    acc = (bundle.manifest.get("scores") or {}).get("target_val_accuracy")
    if isinstance(acc, (int, float)) and not isinstance(acc, bool) and math.isfinite(acc):
        evidence["target_val_accuracy"] = acc
    return [_finding("negative_transfer", -score, f"Negative transfer: the fine-tuned model's best target accuracy "
                     f"is {_pct(-score)} below the source model's", evidence, STATISTICS, {"classes": []})]


def _class_rows(confusion: dict) -> list[tuple[str, float, float, int]]:
    """(class, source accuracy, target accuracy, support) of the rows a class-level finding may use."""
    out = []
    for i, cls in enumerate(confusion["class"]):
        s, t, n = confusion["source_accuracy"][i], confusion["target_accuracy"][i], confusion["support"][i]
        if s is None or t is None or n is None:
            continue
        s, t, n = float(s), float(t), int(n)
        if math.isfinite(s) and math.isfinite(t) and n >= MIN_SUPPORT:
            out.append((str(cls), s, t, n))
    return out


def _class_changes(bundle) -> list[dict]:
    rows = _class_rows(bundle.confusion())
    out = []
    for cls, s, t, n in rows:
        if s - t > CLASS_LOSS_ABOVE:
            out.append(_finding("class_negative_transfer", s - t,
                                f"Negative transfer for class {_name(cls)}: {_pct(t)} fine-tuned vs {_pct(s)} source "
                                "model on its target validation instances",
                                {"class": cls, "source_accuracy": s, "target_accuracy": t, "difference": t - s,
                                 "support": n}, STATISTICS, {"classes": [cls]}))
    if rows:  # first in class order among equal differences
        gain = max(rows, key=lambda r: r[2] - r[1])
        loss = min(rows, key=lambda r: r[2] - r[1])
        for kind, (cls, s, t, n), word in (("largest_gain", gain, "gain"), ("largest_loss", loss, "loss")):
            d = t - s
            if (d if kind == "largest_gain" else -d) > CLASS_CHANGE_ABOVE:
                out.append(_finding(kind, abs(d), f"Largest {word}: class {_name(cls)}, {_pct(s)} → {_pct(t)} "
                                    f"({'+' if d > 0 else '−'}{_pct(abs(d))})",
                                    {"class": cls, "source_accuracy": s, "target_accuracy": t, "difference": d,
                                     "support": n}, STATISTICS, {"classes": [cls]}))
    return out


def _forgotten(bundle) -> list[dict]:
    confusion = bundle.domain_confusion("source")
    if confusion is None:
        return []
    rows = []
    for i, cls in enumerate(confusion["class"]):
        s, t, n = confusion["source_accuracy"][i], confusion["target_accuracy"][i], confusion["support"][i]
        if None in (s, t, n) or not (math.isfinite(float(s)) and math.isfinite(float(t))) or int(n) < 1:
            continue
        rows.append((str(cls), float(s), float(t), int(n)))
    total = sum(r[3] for r in rows)
    if total == 0:
        return []
    source = sum(r[1] * r[3] for r in rows) / total
    target = sum(r[2] * r[3] for r in rows) / total
    if not source - target > FORGOTTEN_ABOVE:
        return []
    worst = max(rows, key=lambda r: r[1] - r[2])
    return [_finding("forgotten_source", source - target,
                     f"Source domain forgotten: the fine-tuned model gets {_pct(target)} of the source validation set, "
                     f"the source model {_pct(source)}",
                     {"source_model_accuracy": source, "target_model_accuracy": target, "drop": source - target,
                      "instances": total, "worst_class": worst[0], "worst_class_drop": worst[1] - worst[2]},
                     STATISTICS, {"classes": []})]


def _inheritance(bundle) -> list[dict]:
    table = bundle.layer_comparison()
    rows = sorted((int(d), str(layer), share, int(w)) for c, d, layer, share, w in zip(
        table["class_index"], table["depth"], table["layer"], table["inherited_weight_share"],
        table["n_important_weights"]) if int(c) == -1)
    previous = None
    for depth, layer, share, n_weights in rows:
        if share is None or not math.isfinite(float(share)):
            continue
        share = float(share)
        if share < INHERITED_SHARE_BELOW:
            evidence = {"layer": layer, "depth": depth, "inherited_weight_share": share,
                        **({"previous_share": previous} if previous is not None else {}),
                        "important_weights": n_weights}
            return [_finding("inheritance_below_half", 1 - share,
                             f"Weight inheritance falls below half at {_name(layer)} (depth {depth}): "
                             f"{_pct(share)} of its important weights inherited", evidence,
                             NETWORK, {"classes": [], **_span(bundle, depth), "neuron": ""})]
        previous = share
    return []


def _unstable(bundle) -> list[dict]:
    out = []
    for cls in bundle.classes:
        worst, unstable = None, 0
        for model in ("source", "target"):
            per_layer = bundle.stability(cls, model)
            if per_layer is None:
                return []  # an older bundle: no stability record
            for layer in bundle.layers:
                r = per_layer.get(layer)
                if r is None or not math.isfinite(r["stability"]):
                    continue
                unstable += r["stability"] < STABILITY_BELOW
                if worst is None or r["stability"] < worst[0]:
                    worst = (r["stability"], model, layer, r)
        if worst is None or not worst[0] < STABILITY_BELOW:
            continue
        j, model, layer, r = worst
        out.append(_finding("unstable_class", 1 - j,
                            f"Unstable important neurons for class {_name(cls)}: mean Jaccard {j:.2f} "
                            f"({model} model, {_name(layer)})",
                            {"class": cls, "model": model, "layer": layer, "stability": j,
                             "unstable_layers": int(unstable), "instances": r["n_instances"],
                             "resamples": r["n_resamples"]},
                            NETWORK, {"classes": [cls], **_span(bundle, bundle.layers.index(layer)), "neuron": ""}))
    return out


def rank_percentiles(a: np.ndarray) -> np.ndarray:
    """(M, U) → (M, U) float64: each value's ascending rank within its row, ties averaged
    (`scipy.stats.rankdata(..., axis=1)`), mapped to [0, 1] by (rank − 1) / (U − 1). U ≥ 2."""
    a = np.asarray(a)  # compared in its own dtype: float32 conductance sorts twice as fast as float64
    m, u = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    values = np.take_along_axis(a, order, 1)
    pos = np.broadcast_to(np.arange(u), (m, u))
    starts = np.ones((m, u), bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = np.ones((m, u), bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)  # a tie group's first position
    last = np.minimum.accumulate(np.where(ends, pos, u - 1)[:, ::-1], axis=1)[:, ::-1]  # and its last
    ranks = np.empty((m, u))
    np.put_along_axis(ranks, order, (first + last) / 2, 1)  # 0-based average rank
    return ranks / (u - 1)


def _top(scores: np.ndarray, k: int) -> set[int]:
    return {int(j) for j in np.argsort(-scores, kind="stable")[:k]}


def _domain_specific(bundle) -> list[dict]:
    table = bundle.reader.read_table("instances/table", columns=["label", "domain"])
    domain, labels = np.asarray(table["domain"], np.int64), np.asarray(table["label"], np.int64)
    fraction = (bundle.manifest.get("options") or {}).get("top_fraction", 0.1)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
        fraction = 0.1
    best: dict[str, dict | None] = {"source": None, "target": None}
    counts = {"source": 0, "target": 0}
    for depth, layer in enumerate(bundle.layers):
        a = bundle.conductance("target", layer)
        if a.ndim != 2 or a.shape[0] != len(domain) or a.shape[1] < 2:
            continue
        ok = np.isfinite(a).all(axis=1)  # NaN: rows the diagnostics did not compute for this model
        used = {d: _sample(np.flatnonzero(ok & (domain == code))) for d, code in (("source", 0), ("target", 1))}
        if not len(used["source"]) or not len(used["target"]):
            continue
        order = np.concatenate([used["source"], used["target"]])
        pct = rank_percentiles(a[order])
        rows = {"source": np.arange(len(order)) < len(used["source"])}
        rows["target"] = ~rows["source"]
        mean = {d: pct[rows[d]].mean(axis=0) for d in rows}
        k = max(1, math.ceil(round(fraction * a.shape[1], 9)))
        top = {d: _top(mean[d], k) for d in mean}
        for d, other in (("source", "target"), ("target", "source")):
            spec = mean[d] - mean[other]
            for j in sorted(top[d] - top[other]):
                if spec[j] > DOMAIN_SPECIFIC_ABOVE:
                    counts[d] += 1
                    if best[d] is None or spec[j] > best[d]["spec"]:
                        best[d] = {"spec": float(spec[j]), "depth": depth, "j": j, "own": float(mean[d][j]),
                                   "theirs": float(mean[other][j]), "column": pct[:, j], "mine": rows[d],
                                   "labels": labels[order], "n": {x: int(rows[x].sum()) for x in rows}}
    out = []
    for d, other in (("source", "target"), ("target", "source")):
        b = best[d]
        if b is None:
            continue
        layer, j = bundle.layers[b["depth"]], b["j"]
        cls = _strongest_class(bundle, b["column"], b["labels"], b["mine"])
        out.append(_finding(f"{d}_only_neuron", b["spec"],
                            f"{d.capitalize()}-only neuron: {_name(layer)} #{j} of the fine-tuned model (mean rank "
                            f"percentile {b['own']:.2f} on {d}-domain instances, {b['theirs']:.2f} on {other}-domain "
                            "ones)",
                            {"layer": layer, "neuron": j, f"{d}_percentile": b["own"], f"{other}_percentile": b["theirs"],
                             "specificity": b["spec"], f"{d}_only_neurons": counts[d],
                             "source_rows": b["n"]["source"], "target_rows": b["n"]["target"],
                             **({"class": cls} if cls else {})},
                            NETWORK, {"classes": [cls] if cls else [], **_span(bundle, b["depth"]),
                                      "neuron": f"target:{layer}:{j}"}))
    return out


def _sample(rows: np.ndarray) -> np.ndarray:
    """At most `RANK_ROWS` of ``rows``: a seeded sample, in row order (a mean percentile needs no more)."""
    if len(rows) <= RANK_ROWS:
        return rows
    return np.sort(np.random.default_rng(0).choice(rows, RANK_ROWS, replace=False))


def _strongest_class(bundle, column: np.ndarray, labels: np.ndarray, mine: np.ndarray) -> str | None:
    """The class with similarity records on whose rows of the neuron's own domain it ranks highest (the
    Network tab draws one class), or None."""
    best = None
    for cls in bundle.compared_classes:
        sel = mine & (labels == bundle.classes.index(cls))
        if sel.any() and (best is None or column[sel].mean() > best[0]):
            best = (float(column[sel].mean()), cls)
    return None if best is None else best[1]


# --- reading ---------------------------------------------------------------------------------------------

_FIELDS = {"kind": str, "title": str, "score": (int, float), "evidence": dict, "tab": str, "state": dict}


def _scalar(v) -> bool:
    return isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _state_value(v) -> bool:
    return isinstance(v, (str, bool)) or _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v))


def check_findings(record, corrupt) -> list[dict]:
    """The findings list of a stored ``findings`` record, each checked (``corrupt(expected, got)`` makes the
    reader's error for one that is not what `findings_record` writes). Strings are bundle text: escape them."""
    expected = ("findings.json as {version, findings: [{kind, title, score, evidence: {name: number | text}, "
                "tab, state: {URL parameter: value}}]}")
    if not isinstance(record, dict) or not isinstance(record.get("findings"), list):
        raise corrupt(expected, repr(record)[:80])
    out = []
    for i, f in enumerate(record["findings"]):
        if not isinstance(f, dict) or any(not isinstance(f.get(k), t) or isinstance(f.get(k), bool)
                                          for k, t in _FIELDS.items()):
            raise corrupt(expected, f"finding {i}: {repr(f)[:80]}")
        if not math.isfinite(f["score"]) or not all(isinstance(k, str) and _scalar(v) for k, v in f["evidence"].items()) \
                or not all(isinstance(k, str) and _state_value(v) for k, v in f["state"].items()):
            raise corrupt(expected, f"finding {i}: {repr(f)[:80]}")
        out.append({k: f[k] for k in _FIELDS})
    return out
