"""The robustness records of a pair (issue 13), for the engine's one `robustness` stage.

`robustness_set` picks the images the curves and DIR rest on (the target validation set, streamed
once and capped at a seeded sample); `pair_robustness` computes both models' curves, the DIR of both
teacher attacks with their inherited examples, and the conductance shift of each model's important
neurons under the teacher's output attack, as the bundle's records (`PairRobustness`, written by
`bundle.writer`); `check_robustness_options` checks the options before any costly stage.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..validation import check_int, check_labels
from .attacks import ATTACKS, DIR_ATTACKS, STEP_RULE, attack_images, check_epsilon, check_images
from .robustness import DefectInheritance, as_columns, conductance_shift, defect_inheritance, robustness_curves

__all__ = ["PairRobustness", "RobustnessSet", "check_robustness_options", "pair_robustness", "robustness_set"]


def check_robustness_options(options) -> None:
    """The robustness fields of a `DiagnoseOptions`, checked before any costly stage."""
    if not isinstance(options.robustness, bool):
        raise DiagnosticsError(f"Expected robustness as True or False; got {str(options.robustness)[:40]!r}.")
    eps = options.robustness_epsilons
    if not isinstance(eps, (tuple, list)) or not eps:
        raise DiagnosticsError(f"Expected robustness_epsilons as a non-empty sequence of numbers in [0, 1]; got "
                               f"{str(eps)[:60]!r}.")
    for e in eps:
        check_epsilon(e, "each of robustness_epsilons")
    check_epsilon(options.dir_epsilon, "dir_epsilon")
    check_int(options.robustness_pgd_steps, "robustness_pgd_steps", low=1)
    check_int(options.dir_pgd_steps, "dir_pgd_steps", low=1)
    check_int(options.robustness_examples, "robustness_examples", low=0)
    check_int(options.robustness_max_rows, "robustness_max_rows", low=1)


@dataclass(frozen=True)
class RobustnessSet:
    """The images the curves and DIR rest on: images float (N, C, H, W), labels int64 (N,) in the
    pair's label space, index int64 (N,) each row's index in its set, basis: what they are, in words."""

    images: torch.Tensor
    labels: np.ndarray
    index: np.ndarray
    basis: str


def _stream(data) -> Iterable:
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=256, shuffle=False)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, torch.Tensor, np.ndarray)):
        return data
    raise DiagnosticsError(f"Expected the target validation set as a torch Dataset of (image, label) items or an "
                           f"iterable of (images, labels) batches; got {type(data).__name__}.")


def robustness_set(validation, instances, n_classes: int, max_rows: int, seed: int) -> RobustnessSet:
    """The target validation set (``validation.target``, streamed once), or without one the analysed
    target-domain validation rows of ``instances`` (all target-domain rows when there are none), capped
    at a seeded uniform sample of ``max_rows`` (each row keeps the smallest of seeded random keys, so a
    set that does not fit in memory is never held whole)."""
    rng = np.random.default_rng(seed)
    if validation is not None and getattr(validation, "target", None) is not None:
        keys, kept, labs, idx, seen = np.zeros(0), None, np.zeros(0, np.int64), np.zeros(0, np.int64), 0
        for i, batch in enumerate(_stream(validation.target)):
            try:
                x, y = torch.as_tensor(batch[0]), np.asarray(torch.as_tensor(batch[1]).cpu()).reshape(-1)
            except (TypeError, IndexError, KeyError):
                raise DiagnosticsError(f"Expected each batch of the target validation set as (images, labels); got "
                                       f"{type(batch).__name__} in batch {i}.") from None
            if x.ndim != 4 or len(x) != len(y) or y.dtype.kind not in "iu":
                raise DiagnosticsError(f"Expected batch {i} of the target validation set as images (B, C, H, W) and B "
                                       f"integer labels; got images {tuple(x.shape)} and {len(y)} {y.dtype} labels.")
            k = np.concatenate([keys, rng.random(len(y))])
            order = np.argsort(k, kind="stable")[:max_rows]
            kept = (x.float().cpu() if kept is None else torch.cat([kept, x.float().cpu()]))[order]
            labs = np.concatenate([labs, y.astype(np.int64)])[order]
            idx = np.concatenate([idx, np.arange(seen, seen + len(y))])[order]
            keys, seen = k[order], seen + len(y)
        if not seen:
            raise DiagnosticsError("Expected a non-empty target validation set; got no instances.")
        order = np.argsort(idx)
        what = f"target validation set, {len(idx)} instances" + (
            f" (a seeded sample of {seen})" if seen > len(idx) else "")
        images, labels, index = kept[order], labs[order], idx[order]
    else:
        rows = np.flatnonzero((instances.domain == 1) & (instances.split == 1))
        what = "analysed target validation instances"
        if not len(rows):
            rows, what = np.flatnonzero(instances.domain == 1), "analysed target instances (no validation rows)"
        total = len(rows)
        if total > max_rows:
            rows = np.sort(rng.choice(rows, max_rows, replace=False))
        what += f", {len(rows)} instances" + (f" (a seeded sample of {total})" if total > len(rows) else "")
        images, labels, index = instances.images[rows], np.asarray(instances.labels)[rows], instances.index[rows]
    labels = check_labels(labels, "the target validation labels", n_classes)
    return RobustnessSet(check_images(images, "the target validation images"), labels,
                         np.asarray(index, np.int64), what)


@dataclass(frozen=True)
class PairRobustness:
    """The bundle's robustness records (columns as the contract of `bundle.writer` names them).

    Attributes:
        curves: ``robustness/curves`` columns model, attack, epsilon, class_index, accuracy, n.
        dir: ``robustness/dir`` columns attack, class_index, dir, n_clean_correct, n_inherited,
            teacher_success.
        neurons: ``robustness/neurons`` columns model, class_index, layer, neuron, clean, adversarial,
            shift, rank.
        examples: DIR attack → (sprite uint8 (rows·S, 3·S, 3), its table columns row, class_index,
            student_clean, student_adversarial, teacher_clean, teacher_adversarial); an attack with
            no inherited defect has no entry.
        info: the manifest's ``robustness`` block.
    """

    curves: dict
    dir: dict
    neurons: dict
    examples: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Run metrics: ``dir_{attack}`` (all classes) and ``adv_acc_{model}_{attack}`` (all classes, largest ε)."""
        out = {}
        for i, a in enumerate(self.dir["attack"]):
            if self.dir["class_index"][i] == -1 and np.isfinite(self.dir["dir"][i]):
                out[f"dir_{a}"] = float(self.dir["dir"][i])
        top = float(np.max(self.curves["epsilon"])) if len(self.curves["epsilon"]) else 0.0
        for i, (m, a) in enumerate(zip(self.curves["model"], self.curves["attack"])):
            if self.curves["class_index"][i] == -1 and self.curves["epsilon"][i] == top \
                    and np.isfinite(self.curves["accuracy"][i]):
                out[f"adv_acc_{m}_{a}"] = float(self.curves["accuracy"][i])
        return out


def _tile(image: torch.Tensor) -> np.ndarray:
    x = image.detach().cpu().float()
    x = x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x[:3]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _perturbation_tile(delta: torch.Tensor) -> np.ndarray:
    """The perturbation amplified to fill [0, 255], mid-grey = 0 (a zero perturbation is all grey)."""
    d = delta.detach().cpu().float()
    d = d.expand(3, *d.shape[1:]) if d.shape[0] == 1 else d[:3]
    peak = float(d.abs().max())
    scaled = 127.5 + 127.5 * (d / peak if peak > 0 else d)
    return scaled.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _examples(result: DefectInheritance, data: RobustnessSet, count: int, from_own: dict) -> tuple | None:
    """The ``count`` inherited defects the student is most confident about, as a sprite and its table."""
    rows = np.flatnonzero(result.inherited)
    if not len(rows) or count == 0:
        return None
    rows = rows[np.argsort(-result.student_confidence[rows], kind="stable")][:count]
    sprite = np.concatenate([np.concatenate([_tile(data.images[i]), _tile(result.adversarial[i]),
                                             _perturbation_tile(result.adversarial[i] - data.images[i].cpu())], 1)
                             for i in rows], 0)

    def pair_label(role, pred):  # -1: an output beyond the model's class list (not in the pair's space)
        own = np.asarray(from_own[role])
        return np.where(pred < len(own), own[np.minimum(pred, len(own) - 1)], -1)

    table = {"row": data.index[rows], "class_index": data.labels[rows],
             "student_clean": pair_label("target", result.student_clean[rows]),
             "student_adversarial": pair_label("target", result.student_adversarial[rows]),
             "teacher_clean": pair_label("source", result.teacher_clean[rows]),
             "teacher_adversarial": pair_label("source", result.teacher_adversarial[rows])}
    return sprite, {k: np.asarray(v, np.int64) for k, v in table.items()}


def pair_robustness(models: dict[str, nn.Module], data: RobustnessSet, options, *, maps: tuple[dict, dict],
                    instances, analysed: dict[str, np.ndarray], class_index: dict[str, int], targets: dict,
                    important: dict, conductance: dict, layer_names: tuple[str, ...],
                    n_steps: dict[str, int]) -> PairRobustness:
    """Curves of both models, DIR of both teacher attacks, their inherited examples, and the conductance
    shift of each model's important neurons under the teacher's output attack.

    Args:
        models: ``{"source": teacher, "target": student}``.
        data: the images the curves and DIR rest on (`robustness_set`).
        options: a `DiagnoseOptions` (its robustness fields, baseline, method, batch_size, seed).
        maps: (pair label → own label, -1 unknown; own label → pair label) per model (`labelspaces.label_maps`).
        instances: the engine's `Instances`; ``analysed``: class → its analysed target-domain rows,
            ``class_index``: class → pair label, ``targets``: model → (N,) conductance targets,
            ``important``: model → class → layer → neuron ids, ``conductance``: model → layer →
            (N, units) (the clean conductance of those rows), ``n_steps``: model → its steps.
    """
    started = time.perf_counter()
    to_own, from_own = maps
    teacher, student = models["source"], models["target"]
    epsilons = tuple(float(e) for e in options.robustness_epsilons)
    curves = {"model": [], "attack": [], "epsilon": [], "class_index": [], "accuracy": [], "n": []}
    for role, model in models.items():
        part = robustness_curves(model, data.images, to_own[role][data.labels], epsilons=epsilons,
                                 pgd_steps=options.robustness_pgd_steps, groups=data.labels)
        curves["model"] += [role] * len(part["n"])
        for k, v in part.items():
            curves[k] += list(v)
    dirs = {k: [] for k in ("attack", "class_index", "dir", "n_clean_correct", "n_inherited", "teacher_success")}
    examples = {}
    for attack in DIR_ATTACKS:
        result = defect_inheritance(teacher, student, data.images, to_own["source"][data.labels],
                                    to_own["target"][data.labels], epsilon=options.dir_epsilon,
                                    steps=options.dir_pgd_steps, attack=attack, seed=options.seed,
                                    groups=data.labels)
        dirs["attack"] += [attack] * len(result.table["dir"])
        for k, v in result.table.items():
            dirs[k] += list(v)
        found = _examples(result, data, options.robustness_examples, from_own)
        if found is not None:
            examples[attack] = found
    neurons = _neuron_shift(models, options, instances, analysed, class_index, targets, important, conductance,
                            layer_names, n_steps)
    seconds = time.perf_counter() - started
    info = {"epsilons": list(epsilons), "attacks": list(ATTACKS), "curve_pgd_steps": int(options.robustness_pgd_steps),
            "curve_step_size": STEP_RULE, "dir_attacks": list(DIR_ATTACKS),
            "dir_pgd_steps": int(options.dir_pgd_steps), "dir_epsilon": float(options.dir_epsilon),
            "basis": data.basis, "seconds": round(seconds, 3)}
    notes = []
    if int(options.dir_pgd_steps) != 40:
        notes.append(f"DIR's PGD ran {options.dir_pgd_steps} steps (ReMoS: 40)")
    if not examples:
        notes.append("no inherited defect: no example images")
    if notes:
        info["note"] = "; ".join(notes)
    return PairRobustness(as_columns(curves), as_columns(dirs), neurons, examples, info)


def _neuron_shift(models, options, instances, analysed, class_index, targets, important, conductance,
                  layer_names, n_steps) -> dict:
    """``robustness/neurons``: each model's important neurons, clean vs the teacher's output attack at
    ``dir_epsilon`` on the analysed target rows of each class."""
    cols = {k: [] for k in ("model", "class_index", "layer", "neuron", "clean", "adversarial", "shift", "rank")}
    classes = [c for c, r in analysed.items() if len(r)]
    if not classes:
        return as_columns(cols)
    rows_all = np.concatenate([analysed[c] for c in classes])
    local, start = {}, 0
    for c in classes:
        local[c] = np.arange(start, start + len(analysed[c]))
        start += len(analysed[c])
    clean = instances.images[rows_all]
    teacher = models["source"]
    adversarial = attack_images(teacher, clean, targets["source"][rows_all], attack="pgd",
                                epsilon=options.dir_epsilon, steps=options.dir_pgd_steps)
    for role, model in models.items():
        layers = {n: model.analysis_layers[n] for n in layer_names}
        shift = conductance_shift(model, clean, adversarial, targets[role][rows_all], layers,
                                  {c: important[role][c] for c in classes}, local, n_steps=n_steps[role],
                                  method=options.method, baselines=options.baseline, batch_size=options.batch_size,
                                  clean_conductance={n: conductance[role][n][rows_all] for n in layer_names})
        for c in classes:
            entries = [(n, int(j), float(a), float(b)) for n in layer_names
                       for j, a, b in zip(important[role][c][n], *shift[c][n])]
            order = np.argsort([-abs(b - a) for _, _, a, b in entries], kind="stable")
            ranks = np.empty(len(entries), np.int64)
            ranks[order] = np.arange(1, len(entries) + 1)
            for (n, j, a, b), rank in zip(entries, ranks):
                cols["model"].append(role); cols["class_index"].append(class_index[c]); cols["layer"].append(n)
                cols["neuron"].append(j); cols["clean"].append(a); cols["adversarial"].append(b)
                cols["shift"].append(b - a); cols["rank"].append(int(rank))
    return as_columns(cols)
