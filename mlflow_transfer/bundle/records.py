"""The pair bundle: which records a diagnosed pair holds, and how each is read back (`PairBundle`).

Layout (names without extension; ``c<i>`` is class index i, models are ``source``/``target``):
``statistics/history`` (table: model, dataset, epoch, accuracy), ``statistics/summary`` (json),
``statistics/confusion`` (table, the paper's five columns) and ``statistics/confusion_{model}`` (C×C),
``instances/table`` (one row per instance, t-SNE x/y, predictions, PNG thumbnail bytes),
``instances/embedding_{model}`` (N×D), ``conductance/{model}/{layer}`` (N×units),
``neurons/important`` (table), ``similarity/c<i>/{layer}`` (Us×Ut), ``weights/important`` (table),
``weights/{model}/c<i>/{layer}/{counts,levels}`` (N_next×N_prev, links to the next layer),
``comparison/layers`` (table), ``discriminability/{c<i>|all}/*``, ``features/{model}/{layer}/*``
(sprite PNG + indices/values; ``vis``, optional: one feature-visualisation tile per neuron, stacked
downwards in the order of ``neurons``), ``cka/matrix``.

The reader side only: numpy, pyarrow and PIL (through `BundleReader`), no torch — this is the app's
only door to a diagnosed pair. `write_pair_bundle` (in `writer`) writes these records from a
`PairDiagnostics` and is imported explicitly by the tracking layer and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..neighbours import most_similar
from .io import BundleReader, shown

MODELS = ("source", "target")
_MANIFEST_DICTS = ("runs", "domains", "scores", "software", "options")  # optional, objects when present


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

    def history(self) -> dict:
        return self.reader.read_table("statistics/history")

    def summary(self) -> dict:
        return self._record("statistics/summary")

    def confusion(self) -> dict:
        return self.reader.read_table("statistics/confusion")

    def confusion_matrix(self, model: str) -> np.ndarray:
        return self.reader.read_array(f"statistics/confusion_{model}")

    def instances(self) -> dict:
        return self.reader.read_table("instances/table")

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

    def layer_comparison(self) -> dict:
        return self.reader.read_table("comparison/layers")

    def discriminability(self, cls: str = "__all__") -> dict:
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
