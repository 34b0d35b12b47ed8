"""Label spaces that differ (issue 12): a target model fine-tuned with a new head for its own classes.

The engine works in the pair's label space (every instance label is an index into its ``classes``);
these helpers map it to each model's own label space by class name, and compute what stays defined
when the two models know different classes: predictions in the pair's space, confusion accuracies
undefined where a model does not know the class, and the layer comparison over every target instance.

With ``model_classes`` given, `engine.diagnose_pair` sends each model's conductance towards its own index
of an instance's class name, or, for a class the model does not know, towards its predicted class; runs
the class-level analyses on the classes both know; pools every target-domain instance for the all-class
comparison; and gives the replaced last layer no inheritance (its weights are not the source's).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import DiagnosticsError
from .instances import ModelOutputs, model_outputs
from .ranking import top_k_neurons
from .similarity import layer_summary, neuron_similarity, silent_neurons, weight_correspondence
from .statistics import ConfusionTable
from .weights import extract_important_weights

MODELS = ("source", "target")


def head_prefix(model) -> str:
    """The state-dict prefix of the model's last analysis layer (its head)."""
    last = list(model.analysis_layers.values())[-1]
    return next(f"{n}." for n, m in model.named_modules() if m is last)


def replaced_layers(source, target, layer_names, label_spaces_differ: bool) -> set[str]:
    """The analysed layers whose weights are not the source's by construction: another shape, or the
    target's own head when the label spaces differ (even with as many classes as the source's)."""
    differ = {n for n in layer_names
              if source.analysis_layers[n].weight.shape != target.analysis_layers[n].weight.shape}
    if label_spaces_differ:
        differ.add(list(target.analysis_layers)[-1])
    return differ


def shared_only(wanted: list[str], shared: tuple[str, ...], notes: list[str]) -> list[str]:
    """The classes of ``wanted`` both models know; a note for those left out, and for none shared."""
    unshared = [c for c in wanted if c not in shared]
    if unshared:
        notes.append(f"classes {unshared} are not known to both models: no class-level analyses for them")
    if not shared:
        notes.append("no shared classes: the models' label spaces have no class in common, so there are no "
                     "class-level analyses; the layer-level ones (CKA, inheritance, instances, "
                     "discriminability) cover every target class")
    return [c for c in wanted if c in shared]


def label_maps(classes, model_classes) -> tuple[dict, dict, tuple[str, ...]]:
    """Per model, pair label → own label (-1: a class the model does not know) and own label → pair
    label; and the classes both know, in the order of ``classes`` (issue 12)."""
    if model_classes is None:
        same = np.arange(len(classes), dtype=np.int64)
        return {r: same for r in MODELS}, {r: same for r in MODELS}, tuple(classes)
    if set(model_classes) != set(MODELS) or any(
            len(set(model_classes[r])) != len(model_classes[r]) or not set(model_classes[r]) <= set(classes)
            for r in MODELS):
        raise DiagnosticsError(f"Expected model_classes as {{'source': names, 'target': names}}, each unique and "
                               f"among the pair's classes {list(classes)}; got {model_classes!r:.300}.")
    to_own = {r: np.array([list(model_classes[r]).index(c) if c in model_classes[r] else -1 for c in classes],
                          dtype=np.int64) for r in MODELS}
    from_own = {r: np.array([list(classes).index(c) for c in model_classes[r]], dtype=np.int64) for r in MODELS}
    shared = tuple(c for c in classes if c in model_classes["source"] and c in model_classes["target"])
    return to_own, from_own, shared


def own_outputs(model, images, own: np.ndarray, from_own: np.ndarray) -> tuple[ModelOutputs, np.ndarray]:
    """A model's outputs with predictions in the pair's label space (the true-class probability NaN for
    an instance whose class the model does not know), and its own-space predictions."""
    out = model_outputs(model, images, np.where(own < 0, 0, own))
    true_p = np.where(own < 0, np.nan, out.true_class_probability).astype(np.float32)
    return dataclasses.replace(out, prediction=from_own[out.prediction], true_class_probability=true_p), \
        out.prediction


def unknown_accuracy_nan(table: ConfusionTable, to_own: dict) -> ConfusionTable:
    """``table`` with each model's accuracy NaN on the classes it does not know (issue 12)."""
    src = np.where(to_own["source"] < 0, np.nan, table.source_accuracy)
    tgt = np.where(to_own["target"] < 0, np.nan, table.target_accuracy)
    return dataclasses.replace(table, source_accuracy=src, target_accuracy=tgt, difference=tgt - src)


def pooled_comparison(models, conductance, images, rows, layer_names, pairs, differ, options):
    """The layer comparison over ``rows`` (every target-domain instance) as one group: each model's
    important neurons and weights on them, the similarity of the two models' neurons, and the share of the
    target's important weights inherited — none into a layer whose weights differ in shape (the head)."""
    important = {r: {n: top_k_neurons(conductance[r][n][rows], options.top_fraction) for n in layer_names}
                 for r in MODELS}
    similarity = {n: neuron_similarity(conductance["source"][n][rows], conductance["target"][n][rows])
                  for n in layer_names}
    silent = {r: {n: silent_neurons(conductance[r][n][rows]) for n in layer_names} for r in MODELS}
    weights = {r: extract_important_weights(m, images[rows], fraction=options.weight_fraction,
                                            max_instances=options.weight_max_instances, seed=options.seed,
                                            on_unsupported="skip") for r, m in models.items()}
    correspondence = {
        p: weight_correspondence(weights["target"][p].pairs, weights["source"][p].pairs,
                                 similarity[p[0]], similarity[p[1]],
                                 silent_i=(silent["source"][p[0]], silent["target"][p[0]]),
                                 silent_next=(silent["source"][p[1]], silent["target"][p[1]]))
        for p in pairs if p in weights["target"] and p[1] not in differ}
    return {n: layer_summary(similarity[n], important["target"][n],
                             correspondence.get(next((p for p in pairs if p[0] == n), None), np.zeros(0, dtype=bool)))
            for n in layer_names}
