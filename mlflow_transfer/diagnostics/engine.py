"""All diagnostics of one source→target pair (paper §5.1–5.4), computed from two models and data.

:func:`diagnose_pair` is pure: models and tensors in, a :class:`PairDiagnostics` of numpy arrays and
small records out. Reading runs and writing bundles belong to the tracking and bundle layers.
This module is long because it is the one place that orders every stage of the paper's diagnostics for a pair.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..runtime import progress
from ..neighbours import most_similar
from ..projection import tsne_projection
from ..validation import check_fraction, check_int
from .cka import cka_matrix
from .discriminability import Discriminability, domain_discriminability
from ._hooks import run_with_hooks
from .features import NeuronPatches, top_patches_many
from .featurevis import visualise_layers
from .instances import ModelOutputs, png_thumbnails
from .labelspaces import head_prefix, label_maps, own_outputs, pooled_comparison, replaced_layers, shared_only, \
    unknown_accuracy_nan
from .options import DiagnoseOptions, resolve_n_steps
from .predictions import ValidationSets, predict_validation
from .ranking import resolve_k, top_k_neurons
from .robustness_pair import PairRobustness, check_robustness_options, pair_robustness, robustness_set
from .rows import conductance_on, svm_note, svm_rows
from .similarity import LayerComparison, layer_summary, neuron_similarity, silent_neurons, weight_correspondence
from .stability import Stability, important_set_stability
from .steps import StepChoice, steps_for
from .statistics import ConfusionTable, confusion_table
from .weights import ImportantWeights, LinkKernels, extract_important_weights, pair_link_kernels

MODELS = ("source", "target")  # model roles; domain codes: 0 = source domain, 1 = target domain
WHOLE, SAMPLE = "whole validation set", "analysed sample"  # what the confusion tables were computed on


@dataclass(frozen=True)
class Instances:
    """The analysed instances of both domains (N rows).

    Attributes: images float32 (N, 3, S, S) in [0, 1]; labels int64 (N,); domain int8 (N,) 0 = source,
    1 = target; split int8 (N,) 0 = train, 1 = validation; index int64 (N,) row in its domain dataset.
    """

    images: torch.Tensor
    labels: np.ndarray
    domain: np.ndarray
    split: np.ndarray
    index: np.ndarray


@dataclass(frozen=True)
class PairDiagnostics:
    """Everything the app shows about one pair. Dict keys: model role ("source"/"target"), class name,
    layer name, or (layer, next layer) pairs; arrays documented where they are produced."""

    classes: tuple[str, ...]
    layers: tuple[str, ...]
    options: DiagnoseOptions
    instances: Instances
    outputs: dict[str, ModelOutputs]
    projection: np.ndarray                                   # (N, 2) t-SNE of target-model embeddings
    thumbnails: list[bytes]                                  # (N,) PNG
    conductance: dict[str, dict[str, np.ndarray]]            # model → layer → (N, units)
    important: dict[str, dict[str, dict[str, np.ndarray]]]   # model → class → layer → (k,) neuron ids
    similarity: dict[str, dict[str, np.ndarray]]             # class → layer → (Us, Ut)
    weights: dict[str, dict[str, dict[tuple[str, str], ImportantWeights]]]  # model → class → pair
    correspondence: dict[str, dict[tuple[str, str], np.ndarray]]            # class → pair → (K,) bool
    comparison: dict[str, dict[str, LayerComparison]]        # class (+ "__all__") → layer
    discriminability: dict[str, Discriminability]            # class (+ "__all__")
    discriminability_neurons: dict[str, list[tuple[str, int]]]  # class → (layer, neuron) per column
    confusion: ConfusionTable                                # target validation set (see statistics_basis)
    patches: dict[str, dict[str, dict[int, tuple[NeuronPatches, NeuronPatches]]]]  # model → layer → neuron → (src, tgt)
    cka: np.ndarray                                          # (L, L) source layers × target layers
    timings: dict[str, float] = field(default_factory=dict)  # stage → seconds
    peak_memory_mb: float = 0.0                              # peak RSS of the process
    notes: list[str] = field(default_factory=list)
    # model → (layer, next layer) → the parameters behind every link (class-independent; the pairs
    # that have weight matrices)
    kernels: dict[str, dict[tuple[str, str], LinkKernels]] = field(default_factory=dict)
    confusion_source_domain: ConfusionTable | None = None    # source validation set (None: no such rows)
    statistics_basis: str = SAMPLE                           # WHOLE or SAMPLE: what both confusions rest on
    # model → layer → (neurons int64 (n,), uint8 (n, S, S, 3)): feature visualisations of the neurons with
    # patches, in the order of sorted(patches[model][layer]); empty when feature_vis_steps is 0
    feature_vis: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    stability: dict[str, dict[str, dict[str, Stability]]] = field(default_factory=dict)  # model → class → layer
    silent: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)    # model → class → layer → (U,) bool
    # issue 12: each model's own label space (names, in its label order) and the classes both know
    # (class-level records exist for these only); empty: one label space, `classes`, all shared
    model_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shared_classes: tuple[str, ...] | None = None
    conductance_steps: dict[str, StepChoice] = field(default_factory=dict)  # model → the n_steps used and why
    robustness: PairRobustness | None = None                 # issue 13: None when options.robustness is off

    def layer_summary_table(self) -> dict[str, np.ndarray | list]:
        """Per layer, averaged over classes: inherited share of important weights, mean best similarity."""
        rows = [self.comparison["__all__"][layer] for layer in self.layers]
        return {"layer": list(self.layers), "depth": np.arange(len(self.layers)),
                "inherited_weight_share": np.array([r.inherited_weight_share for r in rows]),
                "mean_best_similarity": np.array([r.mean_best_similarity for r in rows])}


def _select_layers(model: nn.Module, names) -> dict[str, nn.Module]:
    available = list(model.analysis_layers)
    if names is None:
        return dict(model.analysis_layers)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DiagnosticsError(f"Expected layers among the analysis layers {available}; got unknown "
                               f"layer(s) {unknown}. Pass --layers with names from that list.")
    return {n: model.analysis_layers[n] for n in available if n in names}  # keep forward order


def _check_pair(source: nn.Module, target: nn.Module, head_may_differ: bool = False) -> None:
    for role, m in (("source", source), ("target", target)):
        if not hasattr(m, "analysis_layers"):
            raise DiagnosticsError(f"Expected the {role} model as a TransferNet (with analysis layers); got "
                                   f"{type(m).__name__}.")
    a, b = source.state_dict(), target.state_dict()
    if head_may_differ:  # label spaces that differ: the last layer is the target's own (issue 12)
        head = head_prefix(target)
        a, b = ({k: v for k, v in d.items() if not k.startswith(head)} for d in (a, b))
    if list(source.analysis_layers) != list(target.analysis_layers) or \
            any(k not in b or a[k].shape != b[k].shape for k in a):
        raise DiagnosticsError("Expected source and target models of one architecture with the same layers "
                               f"and shapes; got incompatible architectures ({getattr(source, 'arch', '?')} "
                               f"vs {getattr(target, 'arch', '?')}).")


def _layer_outputs(model, images, layers, batch_size=128) -> dict[str, np.ndarray]:
    grabbed: dict[str, list] = {n: [] for n in layers}
    run_with_hooks(model, images, {m: (lambda mod, i, o, n=n: grabbed[n].append(o.flatten(1).float().cpu().numpy().copy()))
                                   for n, m in layers.items()}, batch_size)
    return {n: np.concatenate(v) for n, v in grabbed.items()}


class _Stages:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name):
        stages = self

        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                stages.times[name] = stages.times.get(name, 0.0) + time.perf_counter() - self.t

        return _T()


def diagnose_pair(source_model: nn.Module, target_model: nn.Module, instances: Instances,
                  classes: tuple[str, ...], options: DiagnoseOptions = DiagnoseOptions(),
                  validation: ValidationSets | None = None,
                  model_classes: dict[str, tuple[str, ...]] | None = None) -> PairDiagnostics:
    """Compute every diagnostic of the paper for a pair of models sharing one architecture.

    Args:
        instances: both domains' instances (see :class:`Instances`); the target-domain rows are the
            paper's X_Dt (conductance towards each instance's true class, neuron and weight
            extraction, similarity), the source-domain rows enter the instance view and the domain
            discriminability.
        classes: class names; label i is classes[i].
        validation: the two domains' whole validation sets (see `ValidationSets`), streamed through
            both models for the confusion tables of §5.1, whatever the analysis cap. None: those
            tables rest on the analysed sample's validation rows (``statistics_basis`` says which).
        model_classes: label spaces that differ, ``{"source": names, "target": names}`` (all labels index
            ``classes``; see `labelspaces` for what is computed then). None: one label space.
    """
    _check_pair(source_model, target_model, head_may_differ=model_classes is not None)
    to_own, from_own, shared = label_maps(classes, model_classes)
    if validation is not None and (not isinstance(validation, ValidationSets) or validation.target is None):
        # before the costly stages: the statistics come last
        raise DiagnosticsError("Expected validation as ValidationSets(target=..., source=...) with the target "
                               f"validation set; got {type(validation).__name__}"
                               f"{' without a target set' if isinstance(validation, ValidationSets) else ''}.")
    vis_steps = check_int(options.feature_vis_steps, "feature_vis_steps", low=0, doc="(0 turns it off)")
    resolve_n_steps(options.n_steps)  # checked before the costly stages
    check_fraction(options.completeness_tolerance, "completeness_tolerance")
    check_robustness_options(options)
    models = {"source": source_model, "target": target_model}
    layers = _select_layers(target_model, options.layers)
    layer_names = tuple(layers)
    wanted = list(options.classes or shared)
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise DiagnosticsError(f"Expected classes among the pair's classes {list(classes)}; got unknown "
                               f"class(es) {unknown}.")
    labels, domain = instances.labels, instances.domain
    notes: list[str] = list(getattr(target_model, "diagnosis_notes", lambda _: [])(layer_names))  # adapted
    if model_classes is not None:
        wanted = shared_only(wanted, shared, notes)
    stage = _Stages()
    rng = np.random.default_rng(options.seed)

    with stage("outputs"):
        both = {r: own_outputs(m, instances.images, to_own[r][labels], from_own[r]) for r, m in models.items()}
        outputs, own_pred = {r: v[0] for r, v in both.items()}, {r: v[1] for r, v in both.items()}
    with stage("tsne"):
        projection = tsne_projection(outputs["target"].embedding, seed=options.seed,
                                     gradient=options.tsne_gradient)
    with stage("thumbnails"):
        thumbnails = png_thumbnails(instances.images)

    # each model's own index of the class (its prediction where it does not know the class, issue 12)
    own_targets = {r: np.where(to_own[r][labels] < 0, own_pred[r], to_own[r][labels]) for r in models}
    with stage("steps"):
        steps = {role: steps_for(model, instances.images, own_targets[role], domain,
                                 {n: model.analysis_layers[n] for n in layer_names}, options)
                 for role, model in models.items()}
    notes += [f"{role} model, conductance steps: {c.note}" for role, c in steps.items() if c.note]
    # Only the rows something reads get conductance (NaN elsewhere): the target-domain rows for both
    # models, and the domain classifier's source-domain rows for the target model, drawn first for that.
    svm_plan = svm_rows(labels, domain, classes, wanted, options.svm_max_rows, rng)
    notes += [n for n in [svm_note(svm_plan, labels, domain, classes, options.seed)] if n]
    tgt_all = np.flatnonzero(domain == 1)
    if not len(tgt_all):
        raise DiagnosticsError("Expected target-domain instances (domain 1); got none, so there is nothing "
                               "to diagnose.")
    conductance_rows = {"source": tgt_all,
                        "target": np.union1d(tgt_all, np.concatenate([s for s, _ in svm_plan.values()]))}
    conductance = {}
    for role, model in models.items():
        with stage("conductance"):
            conductance[role] = conductance_on(
                model, instances.images, own_targets[role], conductance_rows[role],
                {n: model.analysis_layers[n] for n in layer_names},
                baselines=options.baseline, n_steps=steps[role].n_steps, method=options.method,
                batch_size=options.batch_size, progress=True)

    important = {r: {} for r in models}
    stability, silent = {r: {} for r in models}, {r: {} for r in models}
    similarity, weights, correspondence, comparison = {}, {r: {} for r in models}, {}, {}
    discrim, discrim_neurons = {}, {}
    pairs = list(zip(layer_names, layer_names[1:]))
    # a layer whose weights differ in shape (the replaced head) inherits nothing: no correspondence into it
    differ = replaced_layers(source_model, target_model, layer_names, model_classes is not None)
    for cls in progress(wanted, desc="classes", unit="class"):
        c = classes.index(cls)
        tgt_rows = np.flatnonzero((domain == 1) & (labels == c))
        src_rows = np.flatnonzero((domain == 0) & (labels == c))
        if len(tgt_rows) == 0:
            notes.append(f"class {cls!r} has no target-domain instances; skipped")
            continue
        with stage("ranking"):
            for role in models:
                important[role][cls] = {n: top_k_neurons(conductance[role][n][tgt_rows], options.top_fraction)
                                        for n in layer_names}
        with stage("stability"):
            for role in models:
                stability[role][cls] = {
                    n: important_set_stability(conductance[role][n][tgt_rows],
                                               resolve_k(conductance[role][n].shape[1], options.top_fraction),
                                               n_resamples=options.stability_resamples, seed=options.seed)
                    for n in layer_names}
                silent[role][cls] = {n: silent_neurons(conductance[role][n][tgt_rows]) for n in layer_names}
            reason = next((st.reason for st in stability["target"][cls].values() if st.reason), "")
            if reason:  # depends on the class's instance count only: one note per class
                notes.append(f"class {cls!r}: stability of the important neurons not computed: {reason}")
        with stage("similarity"):
            similarity[cls] = {n: neuron_similarity(conductance["source"][n][tgt_rows],
                                                    conductance["target"][n][tgt_rows]) for n in layer_names}
        with stage("weights"):
            for role, model in models.items():
                found = extract_important_weights(model, instances.images[tgt_rows],
                                                  fraction=options.weight_fraction,
                                                  max_instances=options.weight_max_instances,
                                                  seed=options.seed, on_unsupported="skip")
                weights[role][cls] = {p: w for p, w in found.items() if p in pairs}
        with stage("similarity"):
            correspondence[cls] = {
                p: weight_correspondence(weights["target"][cls][p].pairs, weights["source"][cls][p].pairs,
                                         similarity[cls][p[0]], similarity[cls][p[1]],
                                         silent_i=(silent["source"][cls][p[0]], silent["target"][cls][p[0]]),
                                         silent_next=(silent["source"][cls][p[1]], silent["target"][cls][p[1]]))
                for p in pairs if p in weights["target"][cls] and p[1] not in differ}
            comparison[cls] = {
                n: layer_summary(similarity[cls][n], important["target"][cls][n],
                                 correspondence[cls].get(next((p for p in pairs if p[0] == n), None),
                                                         np.zeros(0, dtype=bool)))
                for n in layer_names}
        with stage("svm"):
            if len(src_rows) == 0:
                notes.append(f"class {cls!r} has no source-domain instances; no domain discriminability")
            else:
                columns = [(n, int(j)) for n in layer_names for j in important["target"][cls][n]]
                a = np.concatenate([conductance["target"][n][:, important["target"][cls][n]] for n in layer_names], 1)
                src_rows, tgt_rows = svm_plan[cls]
                try:
                    discrim[cls] = domain_discriminability(a[src_rows], a[tgt_rows], folds=options.folds,
                                                           seed=options.seed)
                    discrim_neurons[cls] = columns
                    if discrim[cls].note:
                        notes.append(f"class {cls!r}: {discrim[cls].note}")
                except DiagnosticsError as exc:
                    notes.append(f"class {cls!r}: domain discriminability not computed: {exc}")

    analysed = [c for c in wanted if c in similarity]
    if not analysed and model_classes is None:
        raise DiagnosticsError("Expected a class with target-domain instances; got none, so there is "
                               "nothing to diagnose.")
    with stage("weights"):
        kernels = pair_link_kernels(models, important, weights, analysed, notes)
    if model_classes is None:
        comparison["__all__"] = {n: _mean_comparison([comparison[c][n] for c in analysed]) for n in layer_names}
    else:  # label spaces differ: every target class, pooled (the shared ones may be few or none)
        with stage("weights"):
            comparison["__all__"] = pooled_comparison(models, conductance, instances.images,
                                                       np.flatnonzero(domain == 1), layer_names, pairs, differ,
                                                       options)
    with stage("svm"):
        src_all, tgt_svm = svm_plan["__all__"]
        if len(src_all):
            top_all = {n: top_k_neurons(conductance["target"][n][tgt_all], options.top_fraction) for n in layer_names}
            a = np.concatenate([conductance["target"][n][:, top_all[n]] for n in layer_names], 1)
            try:  # e.g. a fine-tuning that diverged into dead units: the rest of the diagnosis still stands
                discrim["__all__"] = domain_discriminability(a[src_all], a[tgt_svm], folds=options.folds,
                                                             seed=options.seed)
                discrim_neurons["__all__"] = [(n, int(j)) for n in layer_names for j in top_all[n]]
            except DiagnosticsError as exc:
                notes.append(f"all classes: domain discriminability not computed: {exc}")

    with stage("statistics"):
        confusion, confusion_source, basis = _statistics(models, instances, outputs, classes, validation,
                                                         options.batch_size, from_own)
        if model_classes is not None:  # a model's accuracy on a class it does not know is undefined
            confusion, confusion_source = (None if t is None else unknown_accuracy_nan(t, to_own)
                                           for t in (confusion, confusion_source))

    robustness = None  # issue 13: attacks on the target validation set, DIR, the attack's conductance shift
    if options.robustness:
        with stage("robustness"):
            attacked = robustness_set(validation, instances, len(classes), options.robustness_max_rows, options.seed)
            robustness = pair_robustness(
                models, attacked, options, maps=(to_own, from_own), instances=instances,
                class_index={c: classes.index(c) for c in analysed},
                analysed={c: np.flatnonzero((domain == 1) & (labels == classes.index(c))) for c in analysed},
                targets=own_targets, important=important, conductance=conductance, layer_names=layer_names,
                n_steps={r: s.n_steps for r, s in steps.items()})

    patches = {r: {} for r in models}
    with stage("features"):
        src_idx, tgt_idx = np.flatnonzero(domain == 0), np.flatnonzero(domain == 1)
        for role, model in models.items():
            wanted_neurons = _patch_neurons(role, important, similarity, analysed, layer_names, options.similar)
            if not any(wanted_neurons.values()):  # no class-level analyses (no shared classes): no patches
                patches[role] = {n: {} for n in layer_names}
                continue
            requests = {n: (model.analysis_layers[n], wanted_neurons[n]) for n in layer_names}
            per_domain = [top_patches_many(model, requests, instances.images[rows], k=options.patches,
                                           patch_size=options.patch_size) if len(rows) else None
                          for rows in (src_idx, tgt_idx)]
            for n, (_, neurons) in requests.items():
                patches[role][n] = {j: tuple(_reindex(d[n][j], rows) if d else None
                                             for d, rows in zip(per_domain, (src_idx, tgt_idx)))
                                    for j in neurons}

    feature_vis = {}
    with stage("featurevis"):
        if vis_steps > 0:  # the same neurons as the patches; the source's from the cache
            for role, model in models.items():  # when another pair of its run already made them
                done = visualise_layers(model, {n: (model.analysis_layers[n], sorted(patches[role][n]))
                                                for n in layer_names if patches[role][n]},
                                        image_size=int(instances.images.shape[-1]),
                                        steps=vis_steps, seed=options.seed)
                feature_vis[role] = {n: (done.neurons[n], done.images[n]) for n in done.neurons}

    with stage("cka"):
        rows = np.flatnonzero(domain == 1)
        if len(rows) > options.cka_max_instances:
            rows = np.sort(rng.choice(rows, options.cka_max_instances, replace=False))
        feats = {r: _layer_outputs(m, instances.images[rows], {n: m.analysis_layers[n] for n in layer_names})
                 for r, m in models.items()}
        try:
            cka = cka_matrix(feats["source"], feats["target"])
        except DiagnosticsError as exc:
            notes.append(f"CKA not computed: {exc}")
            cka = np.full((len(layer_names), len(layer_names)), np.nan)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return PairDiagnostics(tuple(classes), layer_names, options, instances, outputs, projection, thumbnails,
                           conductance, important, similarity, weights, correspondence, comparison,
                           discrim, discrim_neurons, confusion, patches, cka, dict(stage.times),
                           peak / 2 ** 20, notes, kernels=kernels, confusion_source_domain=confusion_source,
                           statistics_basis=basis, feature_vis=feature_vis,
                           stability=stability, silent=silent, conductance_steps=steps, robustness=robustness,
                           model_classes={r: tuple(model_classes[r]) for r in MODELS} if model_classes else {},
                           shared_classes=shared if model_classes is not None else None)


def _statistics(models, instances, outputs, classes, validation, batch_size, from_own=None):
    """Confusion tables of both models on the target and the source validation set, and their basis
    (``from_own``: each model's own label → pair label, when the label spaces differ)."""
    if validation is not None:
        found = {}
        for name, data in (("target", validation.target), ("source", validation.source)):
            if data is None:
                continue
            p = predict_validation(models, data, len(classes), name=name, batch_size=batch_size)
            pred = {r: p.predictions[r] if from_own is None else from_own[r][p.predictions[r]] for r in MODELS}
            found[name] = confusion_table(p.labels, pred["source"], pred["target"], classes)
        return found["target"], found.get("source"), WHOLE
    tables = {}
    for code, name in ((1, "target"), (0, "source")):
        val = np.flatnonzero((instances.domain == code) & (instances.split == 1))
        tables[name] = confusion_table(instances.labels[val], outputs["source"].prediction[val],
                                       outputs["target"].prediction[val], classes) if len(val) or code else None
    return tables["target"], tables["source"], SAMPLE


def _patch_neurons(role, important, similarity, classes, layer_names, k) -> dict[str, list[int]]:
    """Per layer, the neurons of model ``role`` that get patches: its important neurons of every class,
    and the ``k`` most similar to each important neuron of the other model (the detail panel of §5.3.3
    shows those beside a clicked neuron), chosen as the app chooses them (`mlflow_transfer.neighbours.most_similar`)."""
    other = "target" if role == "source" else "source"
    out = {}
    for n in layer_names:
        chosen = set()
        for c in classes:
            chosen.update(int(j) for j in important[role][c][n])
            for j in important[other][c][n]:
                chosen.update(int(i) for i in most_similar(similarity[c][n], other, int(j), k)[0])
        out[n] = sorted(chosen)
    return out


def _reindex(p: NeuronPatches, rows: np.ndarray) -> NeuronPatches:
    # top_patches indexes the images it was given; store rows of the whole instance table instead.
    return dataclasses.replace(p, indices=rows[p.indices].astype(np.int64))


def _mean_comparison(rows: list[LayerComparison]) -> LayerComparison:
    def mean(attr):
        values = np.array([getattr(r, attr) for r in rows], dtype=float)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    return LayerComparison(
        n_important_weights=int(sum(r.n_important_weights for r in rows)),
        n_inherited_weights=int(sum(r.n_inherited_weights for r in rows)),
        inherited_weight_share=mean("inherited_weight_share"),
        n_important_neurons=int(sum(r.n_important_neurons for r in rows)),
        mean_best_similarity=mean("mean_best_similarity"))

