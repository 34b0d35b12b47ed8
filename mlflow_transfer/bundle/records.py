"""The pair bundle: which records a diagnosed pair holds, and how each is read back (`PairBundle`).

Layout (names without extension; ``c<i>`` is class index i, models are ``source``/``target``):
``statistics/history`` (table: model, dataset, epoch, accuracy), ``statistics/summary`` (json),
``statistics/confusion`` (table, the paper's five columns plus support, both models on the target
validation set) and ``statistics/confusion_{model}`` (C×C); ``statistics/source_domain/confusion`` and
``statistics/source_domain/confusion_{model}``, the same on the source validation set (optional:
absent in bundles of schema 1.1 and older); ``statistics/summary`` says what both rest on: ``basis``
("whole validation set", or "analysed sample" — the validation rows of the capped sample; absent in
older bundles, which used it) and ``validation_counts`` ({"target": N, "source": N or null}), and the
manifest's ``transferability_note`` (copied into the summary) why a pair has no transferability score
(e.g. a target run with no fine-tuned epoch);
``instances/table`` (one row per instance, t-SNE x/y, predictions, PNG thumbnail bytes),
``instances/embedding_{model}`` (N×D), ``conductance/{model}/{layer}`` (N×units; NaN on the rows no
diagnostic reads: the source model's source-domain rows, the target model's outside the domain classifiers'),
``neurons/important`` (table), ``similarity/c<i>/{layer}`` (Us×Ut), ``weights/important`` (table),
``weights/{model}/c<i>/{layer}/{counts,levels}`` (N_next×N_prev, links to the next layer),
``weights/{model}/kernels/{layer}/{values,kernels,rows}`` (the parameters behind each link, per model),
``comparison/layers`` (table; class_index -1: all classes, pooled over every target instance when the
label spaces differ), the manifest's ``source_classes``, ``target_classes`` and ``shared_classes``
(issue 12, each model's label space and the classes both know; absent in older bundles: all shared),
``neurons/stability`` and ``neurons/silent`` (tables; absent before
schema 1.2), ``discriminability/{c<i>|all}/*``, ``features/{model}/{layer}/*`` (sprite PNG +
indices/values; ``vis``, optional: one feature-visualisation tile per neuron, stacked downwards in the
order of ``neurons``), ``cka/matrix``; issue 13, optional (`PairBundle.robustness`): the manifest's
``robustness`` block, ``robustness/curves``, ``robustness/dir``, ``robustness/neurons`` (tables) and
``robustness/examples/{output,feature}`` (PNG sprite: clean | adversarial | perturbation per row, and
its ``/table``); issue 16, optional (`PairBundle.findings`): ``findings`` (json, the ranked
findings of ``bundle/findings.py``).

This module is long because it is the one typed reader of every record: one short method per record or
query, each checking what it reads, which splitting by record would only scatter.

The reader side only: numpy, pyarrow and PIL (through `BundleReader`), no torch — this is the app's
only door to a diagnosed pair. `write_pair_bundle` (in `writer`) writes these records from a
`PairDiagnostics` and is imported explicitly by the tracking layer and the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..neighbours import most_similar
from .findings import FINDINGS, check_findings
from .io import BundleReader, shown

MODELS = ("source", "target")
SOURCE_DOMAIN = "statistics/source_domain"  # the source validation set's confusion records
BASIS_WHOLE, BASIS_SAMPLE = "whole validation set", "analysed sample"
_MANIFEST_DICTS = ("runs", "domains", "scores", "software", "options")  # optional, objects when present
# issue 13: the robustness section's manifest block (key → accepted JSON types) and its tables' columns
_ROBUSTNESS_BLOCK = {"epsilons": list, "attacks": list, "curve_pgd_steps": int, "curve_step_size": str,
                     "dir_attacks": list, "dir_pgd_steps": int, "dir_epsilon": (int, float), "basis": str,
                     "seconds": (int, float)}
ROBUSTNESS_TABLES = {"curves": ("model", "attack", "epsilon", "class_index", "accuracy", "n"),
                     "dir": ("attack", "class_index", "dir", "n_clean_correct", "n_inherited", "teacher_success"),
                     "neurons": ("model", "class_index", "layer", "neuron", "clean", "adversarial", "shift", "rank")}
DIR_ATTACKS = ("output", "feature")  # the teacher-crafted attacks of the defect inheritance rate
EXAMPLE_COLUMNS = ("row", "class_index", "student_clean", "student_adversarial", "teacher_clean",
                   "teacher_adversarial")


@dataclass(eq=False)  # one open bundle is one object: views cache what they read from it by identity
class PairBundle:
    """Typed access to a pair bundle (see the module docstring for the records)."""

    reader: BundleReader

    @classmethod
    def open(cls, root: str | Path) -> "PairBundle":
        reader = BundleReader(root)
        m = reader.manifest
        if "classes" not in m or "layers" not in m:
            raise BundleError(f"{root} is a bundle but not a pair-diagnostics bundle (no classes/layers)")
        # the views index and format these fields directly: a wrong type must stop here, not in a view
        for key in ("classes", "layers"):
            if not isinstance(m[key], list) or not all(isinstance(v, str) for v in m[key]):
                raise reader.corrupt(f"manifest field {key!r} as a list of names", shown(m[key]))
        for key in _MANIFEST_DICTS:
            if m.get(key) is not None and not isinstance(m[key], dict):
                raise reader.corrupt(f"manifest field {key!r} as a JSON object", shown(m[key]))
        return cls(reader)

    def _record(self, name: str) -> dict:
        found = self.reader.read_json(name)
        if not isinstance(found, dict):
            raise self.reader.corrupt(f"{name}.json to hold a JSON object", shown(found))
        return found

    @property
    def manifest(self) -> dict:
        return self.reader.manifest

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def layers(self) -> list[str]:
        return list(self.manifest["layers"])

    def _key(self, cls: str) -> str:
        if cls == "__all__":
            return "all"
        if cls not in self.classes:
            raise BundleError(f"class {cls!r} is not in this bundle; it has {self.classes}")
        return f"c{self.classes.index(cls)}"

    def label_spaces(self) -> dict:
        """Issue 12: ``{"source": [...], "target": [...], "shared": [...]}``, each model's classes and the
        classes both know (the class-level records exist for these only), and ``"differ"``: whether the
        two label spaces differ. A bundle without the record (older schema) has one label space: every
        class in all three lists. Class names are bundle text: escape them."""
        m, classes = self.manifest, self.classes
        found = {k: m.get(f"{k}_classes") for k in ("source", "target", "shared")}
        if all(v is None for v in found.values()):
            return {"source": classes, "target": classes, "shared": classes, "differ": False}
        for key, value in found.items():
            if not isinstance(value, list) or not all(isinstance(v, str) and v in classes for v in value):
                raise self.reader.corrupt(f"manifest field '{key}_classes' as a list of the bundle's class names",
                                          shown(value))
        return {**found, "differ": found["source"] != found["target"]}

    def history(self) -> dict:
        return self.reader.read_table("statistics/history")

    def summary(self) -> dict:
        return self._record("statistics/summary")

    def confusion(self) -> dict:
        return self.reader.read_table("statistics/confusion")

    def confusion_matrix(self, model: str) -> np.ndarray:
        return self.reader.read_array(f"statistics/confusion_{model}")

    def domain_confusion(self, domain: str = "target") -> dict | None:
        """The confusion table (both models, per class) on ``domain``'s validation set; None when the
        bundle has none for the source domain (older bundles, or no source validation rows)."""
        if domain == "target":
            return self.confusion()
        if domain != "source":
            raise BundleError(f"Expected domain 'source' or 'target'; got {domain!r}")
        name = f"{SOURCE_DOMAIN}/confusion"
        return self.reader.read_table(name) if name in self.reader.names("table", SOURCE_DOMAIN + "/") else None

    def statistics_basis(self) -> dict:
        """What the confusion tables rest on: ``basis`` (`BASIS_WHOLE` or `BASIS_SAMPLE`; bundles
        written before the record existed used the analysed sample) and ``validation_counts``
        ({"target": int | None, "source": int | None}: instances; None when not recorded)."""
        summary = self.summary()
        basis = summary.get("basis", BASIS_SAMPLE)
        counts = summary.get("validation_counts")
        counts = counts if isinstance(counts, dict) else {}
        return {"basis": basis if basis in (BASIS_WHOLE, BASIS_SAMPLE) else BASIS_SAMPLE,
                "validation_counts": {d: counts[d] if isinstance(counts.get(d), int) else None
                                      for d in ("target", "source")}}

    def transferability(self) -> tuple[float | None, str | None]:
        """The transferability score (manifest ``scores``) and, when there is none, why: the note the
        diagnostics recorded, or None (e.g. a pair diagnosed from model URIs has no run history)."""
        score = (self.manifest.get("scores") or {}).get("transferability_score")
        note = self.manifest.get("transferability_note")
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            score = None
        return score, note if isinstance(note, str) and score is None else None

    def transferability_estimates(self) -> dict | None:
        """Issue 15: ``{"logme": float | None, "leep": float | None}``, the source model's LogME and LEEP on
        the target training data, estimated before fine-tuning (``statistics/summary``); None when the
        bundle has neither (older bundles, a failed estimate, a pair diagnosed from model URIs)."""
        summary = self.summary()
        found = {}
        for key in ("logme", "leep"):
            value = summary.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise self.reader.corrupt(f"statistics/summary field {key!r} as a number", shown(value))
            found[key] = None if value is None or not math.isfinite(value) else float(value)
        return found if any(v is not None for v in found.values()) else None

    def transferability_basis(self) -> str | None:
        """What the score compares when it is not the paper's (issue 12, label spaces that differ: each
        model's best accuracy on its own task), or None. Bundle text: escape it."""
        basis = self.manifest.get("transferability_basis")
        return basis if isinstance(basis, str) else None

    def findings(self) -> list[dict] | None:
        """Issue 16: the pair's findings, best first (``bundle/findings.py``: kind, title, score, evidence,
        tab, state); None for a bundle written before they were recorded. Strings are bundle text: escape them."""
        if FINDINGS not in self.reader.names("json", FINDINGS):
            return None
        return check_findings(self.reader.read_json(FINDINGS), self.reader.corrupt)

    def instances(self) -> dict:
        return self.reader.read_table("instances/table")

    def analysed_counts(self) -> np.ndarray:
        """(C, 2, 2) int64: the analysed sample's instances per class, domain (0 source, 1 target) and
        split (0 train, 1 validation) — what the instance, network and features views rest on (read
        from three columns of ``instances/table``, not its thumbnails)."""
        table = self.reader.read_table("instances/table", columns=["label", "domain", "split"])
        counts = np.zeros((len(self.classes), 2, 2), np.int64)
        labels, domain, split = (np.asarray(table[k], np.int64) for k in ("label", "domain", "split"))
        ok = (labels >= 0) & (labels < len(self.classes)) & np.isin(domain, (0, 1)) & np.isin(split, (0, 1))
        if not ok.all():
            raise self.reader.corrupt("instances/table's label, domain and split as class, 0/1 and 0/1 codes",
                                      f"{int((~ok).sum())} rows outside them")
        np.add.at(counts, (labels, domain, split), 1)
        return counts

    def embedding(self, model: str) -> np.ndarray:
        return self.reader.read_array(f"instances/embedding_{model}")

    def conductance(self, model: str, layer: str) -> np.ndarray:
        return self.reader.read_array(f"conductance/{model}/{layer}")

    def important_neurons(self) -> dict:
        return self.reader.read_table("neurons/important")

    @property
    def compared_classes(self) -> list[str]:
        """Classes with neuron similarity matrices: those that had target-domain instances."""
        keys = {name.split("/")[1] for name in self.reader.names("array", "similarity/")}
        return [c for i, c in enumerate(self.classes) if f"c{i}" in keys]

    def similarity(self, cls: str, layer: str) -> np.ndarray:
        return self.reader.read_array(f"similarity/{self._key(cls)}/{layer}")

    def most_similar(self, cls: str, layer: str, model: str, index: int, k: int = 5) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``k`` neurons of the other model most similar to neuron ``index`` of ``model``'s ``layer``
        over the class's target instances — those the paper's detail panel (§5.3.3) shows beside a
        clicked neuron, chosen as the diagnostics chose the feature patches they stored
        (`mlflow_transfer.neighbours.most_similar`).

        Returns:
            (indices, values), most similar first (ties: lower index first; NaN last); None when the
            layer has no neuron ``index`` in ``model``.
        """
        sim = self.similarity(cls, layer)
        if not 0 <= index < sim.shape[0 if model == "source" else 1]:
            return None
        return most_similar(sim, model, index, k)

    def weights(self) -> dict:
        return self.reader.read_table("weights/important")

    def weight_matrices(self, model: str, cls: str, layer: str) -> dict | None:
        """All links from ``layer`` to the next analysis layer for one class: ``counts`` (N_next, N_prev)
        int32 — instances on which each link was among the top-k — and ``levels`` (N_next, N_prev)
        float32, the mean activated level. None when the bundle has no such pair (the last layer, a
        ResNet pair, or a bundle older than schema 1.1)."""
        base = f"weights/{model}/{self._key(cls)}/{layer}"
        if f"{base}/counts" not in self.reader.names("array", base + "/"):
            return None
        return {"counts": self.reader.read_array(f"{base}/counts"),
                "levels": self.reader.read_array(f"{base}/levels")}

    def weight_kernels(self, model: str, layer: str) -> dict | None:
        """The parameters behind the links from ``layer`` to the next analysis layer in ``model`` (the
        same for every class): ``values`` (N_next, N_prev) float16, each link's parameters summed;
        ``kernels`` float16, the links' feature maps into the next-layer neurons ``rows`` ((R,) int64,
        ascending): (R, N_prev, kh, kw) conv kernels, (R, N_prev, h, w) a linear layer's weights on
        each input channel's map, or (R, N_prev) weight rows. None when the bundle has none (no such
        pair, or a bundle written before they were recorded)."""
        base = f"weights/{model}/kernels/{layer}"
        if f"{base}/values" not in self.reader.names("array", base + "/"):
            return None
        return {f: self.reader.read_array(f"{base}/{f}") for f in ("values", "kernels", "rows")}

    def link_kernel(self, model: str, layer: str, a: int, b: int) -> np.ndarray | None:
        """The feature map of link a → b (neuron a of ``layer``, b of the next layer) in ``model``:
        (kh, kw), (h, w) or, for linear → linear, the whole weight row of b (N_prev,). None when the
        bundle has no kernels for the pair or did not keep b's."""
        found = self.weight_kernels(model, layer)
        if found is None:
            return None
        rows = found["rows"]
        i = int(np.searchsorted(rows, b))
        if i >= len(rows) or rows[i] != b or not 0 <= a < found["kernels"].shape[1]:
            return None
        k = found["kernels"][i]
        return k if k.ndim == 1 else k[a]

    def layer_comparison(self) -> dict:
        return self.reader.read_table("comparison/layers")

    def conductance_steps(self) -> dict[str, dict] | None:
        """Per model role, the integration steps its conductance used (manifest ``conductance_steps``):
        ``{"n_steps": int, "completeness_error": float | None, "tolerance": float | None, "candidates":
        {str(n_steps): error}, "mode": "auto" | "fixed", ...}``. None when the bundle predates the record."""
        found = self.manifest.get("conductance_steps")
        if found is None:
            return None
        if not isinstance(found, dict) or not all(isinstance(v, dict) and isinstance(v.get("n_steps"), int)
                                                  for v in found.values()):
            raise self.reader.corrupt("manifest field 'conductance_steps' as model → {n_steps, ...}",
                                      str(found)[:80])
        return {str(k): dict(v) for k, v in found.items()}

    def stability(self, cls: str, model: str = "target") -> dict[str, dict] | None:
        """Per layer, the bootstrap stability of ``model``'s important neurons of ``cls``: ``{layer:
        {"stability": float (NaN: not computed), "k", "n_instances", "n_resamples": int, "reason": str
        (why not computed, "" when computed; bundle text: escape it)}}``. Empty for a class that was not
        analysed; None when the bundle predates the record."""
        rows = self._class_rows("neurons/stability", cls, model, (
            "layer", "k", "n_instances", "n_resamples", "stability", "reason"))
        if rows is None:
            return None
        try:
            return {str(r["layer"]): {"stability": float("nan") if r["stability"] is None else float(r["stability"]),
                                      "k": int(r["k"]), "n_instances": int(r["n_instances"]),
                                      "n_resamples": int(r["n_resamples"]), "reason": str(r["reason"] or "")}
                    for r in rows}
        except (TypeError, ValueError) as exc:
            raise self.reader.corrupt("table neurons/stability of numbers and text", str(exc)) from None

    def silent_neurons(self, cls: str, model: str = "target") -> dict[str, tuple[int, int]] | None:
        """Per layer, ``(n_silent, n_neurons)``: ``model``'s neurons without conductance signal over the
        class's instances (they have no counterpart in the comparison). Empty for a class that was not
        analysed; None when the bundle predates the record."""
        rows = self._class_rows("neurons/silent", cls, model, ("layer", "n_neurons", "n_silent"))
        if rows is None:
            return None
        try:
            return {str(r["layer"]): (int(r["n_silent"]), int(r["n_neurons"])) for r in rows}
        except (TypeError, ValueError) as exc:
            raise self.reader.corrupt("table neurons/silent of counts", str(exc)) from None

    def _class_rows(self, name: str, cls: str, model: str, columns: tuple[str, ...]) -> list[dict] | None:
        if name not in self.reader.names("table", name):
            return None
        index = self.classes.index(cls) if cls in self.classes else None
        if index is None:
            raise BundleError(f"class {cls!r} is not in this bundle; it has {self.classes}")
        table = self.reader.read_table(name)
        missing = [c for c in ("model", "class_index", *columns) if c not in table]
        if missing:
            raise self.reader.corrupt(f"table {name} with columns {['model', 'class_index', *columns]}",
                                      f"no column(s) {missing}")
        n = len(table["model"])
        keep = [i for i in range(n) if table["model"][i] == model and table["class_index"][i] == index]
        return [{c: table[c][i] for c in columns} for i in keep]

    def discriminability(self, cls: str = "__all__") -> dict:
        """Algorithm 1's record of ``cls`` ("__all__": all classes): its arrays by name (labels, coef,
        basis, coordinates, axes, hist_*, cv_scores, ranked and, in newer bundles, ``scaled``, the
        (M, P) float32 matrix A the SVM was trained on) and its summary's fields."""
        key = f"discriminability/{self._key(cls)}"
        out = {name.rsplit("/", 1)[1]: self.reader.read_array(name) for name in self.reader.names("array", key + "/")}
        out.update(self._record(f"{key}/summary"))
        return out

    def patches(self, model: str, layer: str) -> dict:
        base = f"features/{model}/{layer}"
        return {"neurons": self.reader.read_array(f"{base}/neurons"),
                "indices": self.reader.read_array(f"{base}/indices"),
                "values": self.reader.read_array(f"{base}/values"),
                "sprite": self.reader.read_png(f"{base}/patches")}

    def feature_vis(self, model: str, layer: str) -> dict | None:
        """The feature visualisations (§5.3.3) of the neurons with patches in ``model``'s ``layer``:
        ``neurons`` int64 (n,) and ``images`` uint8 (n, S, S, 3), row i the optimised image of neuron
        ``neurons[i]``. None when the bundle has none (feature visualisation off, a layer without
        patches, or a bundle older than the record)."""
        base = f"features/{model}/{layer}"
        if f"{base}/vis" not in self.reader.names("image", base + "/"):
            return None
        neurons, sprite = self.reader.read_array(f"{base}/neurons"), self.reader.read_png(f"{base}/vis")
        tile = sprite.shape[1] if sprite.ndim == 3 else 0
        if neurons.ndim != 1 or sprite.ndim != 3 or sprite.shape[2] != 3 or tile == 0 or \
                sprite.shape[0] != len(neurons) * tile:
            raise self.reader.corrupt(f"{base}/vis as one square RGB tile per neuron ({len(neurons)} neurons)",
                                      f"an image of shape {sprite.shape}")
        return {"neurons": neurons, "images": sprite.reshape(len(neurons), tile, tile, 3)}

    def cka(self) -> np.ndarray:
        return self.reader.read_array("cka/matrix")

    def robustness(self) -> dict | None:
        """Issue 13: the robustness section, or None when the bundle has none (diagnosed without it, or
        before the record existed). The manifest block (``epsilons``, ``attacks``, ``curve_pgd_steps``,
        ``curve_step_size``, ``dir_attacks``, ``dir_pgd_steps``, ``dir_epsilon``, ``basis``,
        ``seconds``, optional ``note``) plus the tables ``curves`` (model, attack, epsilon, class_index
        (-1: all classes), accuracy (NaN: a class the model does not know), n), ``dir`` (attack,
        class_index, dir (NaN: no clean-correct sample), n_clean_correct, n_inherited, teacher_success)
        and ``neurons`` (model, class_index, layer, neuron, clean, adversarial, shift, rank), each as
        `BundleReader.read_table` returns it. Strings are bundle text: escape them."""
        block = self.manifest.get("robustness")
        if block is None:
            return None
        expected = ("manifest field 'robustness' as {" + ", ".join(_ROBUSTNESS_BLOCK) +
                    "[, note]} with numbers, text and lists of them")
        if not isinstance(block, dict):
            raise self.reader.corrupt(expected, shown(block))
        for key, kind in _ROBUSTNESS_BLOCK.items():
            value = block.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise self.reader.corrupt(expected, f"{key}={shown(value)}")
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e <= 1 for e in block["epsilons"]):
            raise self.reader.corrupt("manifest field 'robustness.epsilons' as numbers in [0, 1]",
                                      shown(block["epsilons"]))
        for key in ("attacks", "dir_attacks"):
            if not all(isinstance(a, str) for a in block[key]):
                raise self.reader.corrupt(f"manifest field 'robustness.{key}' as a list of names", shown(block[key]))
        if block.get("note") is not None and not isinstance(block["note"], str):
            raise self.reader.corrupt("manifest field 'robustness.note' as text", shown(block["note"]))
        out = dict(block)
        for key, columns in ROBUSTNESS_TABLES.items():
            out[key] = self._robustness_table(f"robustness/{key}", columns)
        return out

    def _robustness_table(self, name: str, columns: tuple[str, ...]) -> dict:
        return self.reader.read_required_table(name, columns, "the manifest has a robustness section")

    def robustness_examples(self, attack: str) -> tuple[np.ndarray, dict] | None:
        """Issue 13: the inherited adversarial examples of the teacher-crafted ``attack`` ("output" or
        "feature"): the sprite, (H, W, 3) uint8 with one row of three tiles per example (clean |
        adversarial | perturbation amplified, mid-grey = 0), and its table (row, class_index,
        student_clean, student_adversarial, teacher_clean, teacher_adversarial; -1: a class outside the
        pair's label space), row i of the table the sprite's row i; an empty table (no inherited defect)
        comes with an empty (0, 0, 3) sprite. None when the bundle has neither."""
        if attack not in DIR_ATTACKS:
            raise BundleError(f"Expected a robustness attack in {list(DIR_ATTACKS)}; got {shown(attack)}")
        base = f"robustness/examples/{attack}"
        has_sprite = base in self.reader.names("image", base)
        if not has_sprite and f"{base}/table" not in self.reader.names("table", base):
            return None
        table = self._robustness_table(f"{base}/table", EXAMPLE_COLUMNS)
        n = len(table["row"])
        if n == 0:  # no inherited defect to show (a PNG cannot be empty: the writer may leave it out)
            return np.zeros((0, 0, 3), np.uint8), table
        if not has_sprite:
            raise self.reader.corrupt(f"image {base} beside its table of {n} examples", "no such image")
        sprite = self.reader.read_png(base)
        if sprite.ndim != 3 or sprite.shape[2] != 3 or sprite.shape[0] % n or sprite.shape[1] % 3:
            raise self.reader.corrupt(f"{base} as an RGB sprite of {n} rows of 3 tiles", f"an image of shape "
                                      f"{sprite.shape}")
        return sprite, table
