"""Adversarial robustness of a pair (issue 13): accuracy under attack, the defect inheritance rate
(DIR, ReMoS) and which important neurons an attack moves.

Every attack is `captum.robust`'s FGSM or PGD, L∞ only, on images in [0, 1] (the models normalise
inside), untargeted. What shaped the calls (REFERENCES.md, "Verified facts"): captum's loss must be
per example — a mean-reduced loss crashes, and without one it takes −log of the outputs as if they
were probabilities — so a per-example loss is always passed; captum leaves the model's mode alone, so
the model runs in eval mode here and its modules' flags are restored; a feature-space attack whose
target is the clean features has gradient 0 at the clean input and moves only with
``random_start=True``. PGD's step size is 2.5·ε/steps (Madry et al.'s rule), so the steps can cross
the ball and back.

- `robustness_curves`: accuracy per ε, attack and class (+ all classes) of one model attacked on itself.
- `defect_inheritance`: adversarial examples crafted on the teacher (``"output"``: its cross-entropy;
  ``"feature"``: the distance of its penultimate features from the clean ones) applied to the student.
- `conductance_shift`: per class and layer, the important neurons' mean conductance on clean vs
  adversarial inputs.
- `pair_robustness`: the three for a pair, as the bundle's records (`PairRobustness`); the engine's
  one call. `robustness_set` picks the images it rests on.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..validation import (
    check_choice,
    check_int,
    check_labels,
    check_module,
    check_number,
)
from .conductance import layer_conductance

__all__ = ["ATTACKS", "DIR_ATTACKS", "STEP_RULE", "DefectInheritance", "PairRobustness", "RobustnessSet",
           "attack_images", "check_epsilon", "check_robustness_options", "conductance_shift",
           "defect_inheritance", "pair_robustness", "robustness_curves", "robustness_set"]

ATTACKS = ("fgsm", "pgd")            # the curves' attacks, each crafted on the model it measures
DIR_ATTACKS = ("output", "feature")  # the teacher's loss that DIR's PGD maximises
STEP_RULE = "2.5*eps/steps"          # PGD's step size, recorded in the manifest
BATCH = 64                           # images per attack batch: gradients of a whole batch at once


def check_epsilon(value, name: str = "epsilon") -> float:
    """An attack radius: a number in [0, 1] (L∞, pixel units of images in [0, 1])."""
    return check_number(value, name, low=0.0, high=1.0,
                        doc="(an L∞ radius in pixel units of images in [0, 1], e.g. 8/255 ≈ 0.031)")


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


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextlib.contextmanager
def _attacking(model: nn.Module):
    """Eval mode (dropout off, batch-norm running statistics) with every module's flag restored after,
    and gradients on even under the caller's no_grad/inference_mode (captum needs input gradients)."""
    states = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            # PGD hands each step a detached tensor, and captum warns on each that it set requires_grad
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            yield
    finally:
        for m, flag in states.items():
            m.training = flag


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.device.type == "mps" else t.double()  # MPS has no float64


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example (captum needs shape (B,)), a loss whose sign steps are the cross-entropy's.

    The cross-entropy is softplus(m) with m = logsumexp_{j≠y} z_j − z_y, so its input gradient is
    sigmoid(m)·∇m: a positive factor per example, the same signs, the same FGSM and PGD steps. m is
    used: captum treats gradient components below 1e-6 as zero, and a confidently right model's
    cross-entropy gradient (the factor sigmoid(m) ≈ e^m) is far below that, so the attack would leave
    its most confident instances untouched; ∇m does not vanish."""
    if out.shape[1] < 2:  # one class: nothing to push towards
        return out.sum(1) * 0
    others = out.scatter(1, y[:, None], float("-inf"))
    return torch.logsumexp(others, 1) - out.gather(1, y[:, None]).squeeze(1)


def _squared_distance(out: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """‖f(x_adv) − f(x)‖² per example, over its detached value: the same sign steps, a gradient that
    stays above captum's 1e-6 cut-off however small the random start's distance is."""
    d = _wide(out - clean).flatten(1).pow(2).sum(1)
    return d / d.detach().clamp(min=torch.finfo(d.dtype).tiny)


def _check_images(images, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{type(images).__name__} {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise DiagnosticsError(f"Expected {name} as a float tensor (N, C, H, W) in [0, 1]; got {got}.")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise DiagnosticsError(f"Expected {name} in [0, 1] (the models normalise inside); got values in "
                               f"[{float(images.min()):.3g}, {float(images.max()):.3g}].")
    return images


def attack_images(model: nn.Module, images: torch.Tensor, labels, *, attack: str, epsilon: float,
                  steps: int = 10, batch_size: int = BATCH) -> torch.Tensor:
    """Untargeted L∞ adversarial images crafted on ``model`` with captum's FGSM or PGD.

    Args:
        images: float (N, C, H, W) in [0, 1] (any device).
        labels: int (N,) in the model's label space: the class whose cross-entropy is raised.
        attack: ``"fgsm"`` (one step of ε) or ``"pgd"`` (``steps`` steps of 2.5·ε/steps, no random start).
        epsilon: the L∞ radius, in [0, 1].

    Returns: float (N, C, H, W) on the CPU, within ε of ``images`` and in [0, 1]; ε = 0 returns the
        images unchanged.
    """
    from captum.robust import FGSM, PGD

    check_module(model)
    check_choice(attack, "attack", ATTACKS)
    epsilon = check_epsilon(epsilon)
    steps = check_int(steps, "steps", low=1)
    images = _check_images(images)
    labels = _own_labels(labels, len(images), "labels")
    if len(labels) and labels.min() < 0:
        raise DiagnosticsError("Expected labels as class indices >= 0 of the model's own space; got -1 (a class the "
                               "model does not know): attack those rows with the model's own prediction.")
    labels = torch.as_tensor(labels)
    device, out = _device(model), []
    with _attacking(model):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).clone()
            y = labels[start:start + batch_size].to(device)
            if attack == "fgsm":
                adv = FGSM(model, _cross_entropy, lower_bound=0.0, upper_bound=1.0).perturb(x, epsilon, y)
            else:
                adv = PGD(model, _cross_entropy, lower_bound=0.0, upper_bound=1.0).perturb(
                    x, epsilon, 2.5 * epsilon / steps, steps, y, random_start=False, norm="Linf")
            out.append(adv.detach().cpu())
    return torch.cat(out) if out else images.detach().cpu().clone()


def _penultimate(model: nn.Module):
    """x → the input of the model's last Linear layer (ReMoS's penultimate features), hooked, so any
    `TransferNet` or adapted classifier gives it; a model whose last analysis layer is no Linear
    gives its embedding (``embed_and_logits`` or ``embedding``)."""
    layers = getattr(model, "analysis_layers", None)
    last = list(layers.values())[-1] if layers else None
    if isinstance(last, nn.Linear):
        def features(x):
            grabbed = []
            handle = last.register_forward_pre_hook(lambda mod, args: grabbed.append(args[0]))
            try:
                model(x)
            finally:
                handle.remove()
            return grabbed[-1]
        return features
    if hasattr(model, "embed_and_logits"):
        return lambda x: model.embed_and_logits(x)[0]
    if hasattr(model, "embedding"):
        return model.embedding
    raise DiagnosticsError(f"Expected the teacher with a last Linear layer or an `embedding` (its penultimate "
                           f"features); got {type(model).__name__}.")


def _feature_attack(model: nn.Module, images: torch.Tensor, *, epsilon: float, steps: int, seed: int,
                    batch_size: int = BATCH) -> torch.Tensor:
    """PGD maximising ‖f(x_adv) − f(x)‖² of the penultimate features, from a seeded random start."""
    from captum.robust import PGD

    features, device, out = _penultimate(model), _device(model), []
    with _attacking(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # captum draws the random start from torch's generator of the device
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).clone()
            with torch.no_grad():
                clean = features(x).detach()
            adv = PGD(features, _squared_distance, lower_bound=0.0, upper_bound=1.0).perturb(
                x, epsilon, 2.5 * epsilon / steps, steps, clean, random_start=True, norm="Linf")
            out.append(adv.detach().cpu())
    return torch.cat(out) if out else images.detach().cpu().clone()


def _predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Argmax class (N,) int64 and its softmax probability (N,) float64, in eval mode."""
    device, pred, conf = _device(model), [], []
    states = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                p = torch.softmax(model(images[start:start + batch_size].to(device)).float(), 1)
                c, k = p.max(1)
                pred.append(k.cpu().numpy()); conf.append(c.cpu().numpy())
    finally:
        for m, flag in states.items():
            m.training = flag
    if not pred:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(pred).astype(np.int64), np.concatenate(conf).astype(np.float64)


def _groups(groups, labels: np.ndarray) -> np.ndarray:
    if groups is None:
        return labels
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != labels.shape:
        raise DiagnosticsError(f"Expected groups with one class index per instance ({len(labels)}); got shape "
                               f"{groups.shape}.")
    return groups


def _own_labels(labels, n: int, name: str) -> np.ndarray:
    """Labels in a model's own space, -1 for a class the model does not know."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or (n and labels.min() < -1):
        raise DiagnosticsError(f"Expected {name} as {n} class indices of the model's own space (-1: a class it does "
                               f"not know); got {labels.dtype} {labels.shape}.")
    return labels.astype(np.int64)


def robustness_curves(model: nn.Module, images: torch.Tensor, labels, *, epsilons, attacks=ATTACKS,
                      pgd_steps: int = 10, batch_size: int = BATCH, groups=None) -> dict[str, np.ndarray]:
    """Accuracy of ``model`` on ``images`` attacked on itself, per attack, ε and class.

    Args:
        images: float (N, C, H, W) in [0, 1].
        labels: int (N,) in the model's own label space; -1 for a class the model does not know
            (not attacked; its class rows are NaN).
        epsilons: L∞ radii in [0, 1]; ε = 0 is the clean accuracy (the attacks are the identity there).
        pgd_steps: PGD's steps (step size 2.5·ε/steps, no random start: the curve is deterministic).
        groups: int (N,) class index of each row for the per-class rows (default ``labels``), e.g. the
            pair's label space.

    Returns: columns ``attack`` (str), ``epsilon`` float64, ``class_index`` int64 (-1 = all known
        classes), ``accuracy`` float64 (NaN: no known instance), ``n`` int64 (instances it rests on),
        one row per (attack, ε, class), classes in increasing order after -1.
    """
    images = _check_images(images)
    labels = _own_labels(labels, len(images), "labels")
    groups = _groups(groups, labels)
    eps = [check_epsilon(e, "each epsilon") for e in epsilons]
    for a in attacks:
        check_choice(a, "attack", ATTACKS)
    known = np.flatnonzero(labels >= 0)
    clean_correct = _predict(model, images[known])[0] == labels[known]
    cols = {"attack": [], "epsilon": [], "class_index": [], "accuracy": [], "n": []}
    for attack in attacks:
        for e in eps:
            if e == 0.0:
                correct = clean_correct
            else:
                adv = attack_images(model, images[known], labels[known], attack=attack, epsilon=e,
                                    steps=pgd_steps, batch_size=batch_size)
                correct = _predict(model, adv)[0] == labels[known]
            for c in [-1, *sorted(set(groups.tolist()))]:
                rows = np.ones(len(known), bool) if c == -1 else groups[known] == c
                n = int(rows.sum())
                cols["attack"].append(attack); cols["epsilon"].append(e); cols["class_index"].append(c)
                cols["accuracy"].append(float(correct[rows].mean()) if n else math.nan); cols["n"].append(n)
    return _arrays(cols)


_TEXT = ("model", "attack", "layer")
_INTEGER = ("class_index", "n", "n_clean_correct", "n_inherited", "neuron", "rank")


def _arrays(cols: dict) -> dict:
    """Columns as the bundle stores them: text as lists of str, counts and ids int64, the rest float64."""
    return {k: [str(x) for x in v] if k in _TEXT else np.asarray(v, np.int64 if k in _INTEGER else np.float64)
            for k, v in cols.items()}


@dataclass(frozen=True)
class DefectInheritance:
    """Adversarial examples crafted on the teacher, applied to the student (N instances).

    Attributes:
        table: columns ``class_index`` int64 (-1 = all), ``dir`` float64 (share of the student's
            clean-correct rows it misclassifies on the adversarial images; NaN with none),
            ``n_clean_correct``, ``n_inherited`` int64, ``teacher_success`` float64 (share of the
            teacher's clean-correct rows that it misclassifies itself; NaN with none, e.g. a class it
            does not know).
        adversarial: float (N, C, H, W) on the CPU.
        student_clean, student_adversarial, teacher_clean, teacher_adversarial: int64 (N,) predictions,
            each in its model's own label space.
        student_confidence: float64 (N,) the student's probability of its adversarial prediction.
        inherited: bool (N,) student clean-correct and adversarial-wrong.
    """

    table: dict
    adversarial: torch.Tensor
    student_clean: np.ndarray
    student_adversarial: np.ndarray
    teacher_clean: np.ndarray
    teacher_adversarial: np.ndarray
    student_confidence: np.ndarray
    inherited: np.ndarray


def defect_inheritance(teacher: nn.Module, student: nn.Module, images: torch.Tensor, labels_teacher,
                       labels_student, *, epsilon: float, steps: int = 40, attack: str = "output",
                       batch_size: int = BATCH, seed: int = 0, groups=None) -> DefectInheritance:
    """The defect inheritance rate (ReMoS): PGD (``steps`` steps of 2.5·ε/steps, L∞) on the teacher,
    applied to the student.

    Args:
        images: float (N, C, H, W) in [0, 1].
        labels_teacher, labels_student: int (N,) each model's own label of every row; -1 for a class
            the model does not know.
        attack: ``"output"`` raises the teacher's cross-entropy of its label (of its clean prediction
            where it does not know the class), from the clean image; ``"feature"`` raises
            ‖f(x_adv) − f(x)‖² of its penultimate features (the input of its last Linear layer) from
            a random start seeded by ``seed``.
        groups: int (N,) class index of each row for the per-class rows (default ``labels_student``).
    """
    check_module(teacher, "teacher")
    check_module(student, "student")
    check_choice(attack, "attack", DIR_ATTACKS)
    epsilon = check_epsilon(epsilon)
    steps = check_int(steps, "steps", low=1)
    images = _check_images(images)
    lt = _own_labels(labels_teacher, len(images), "labels_teacher")
    ls = _own_labels(labels_student, len(images), "labels_student")
    groups = _groups(groups, ls)
    t_clean, _ = _predict(teacher, images)
    s_clean, _ = _predict(student, images)
    if attack == "output":
        if len(images):
            adv = _pgd_output(teacher, images, np.where(lt < 0, t_clean, lt), epsilon, steps, batch_size)
        else:
            adv = images.detach().cpu().clone()
    else:
        adv = _feature_attack(teacher, images, epsilon=epsilon, steps=steps, seed=seed, batch_size=batch_size)
    t_adv, _ = _predict(teacher, adv)
    s_adv, s_conf = _predict(student, adv)
    s_ok, t_ok = (s_clean == ls) & (ls >= 0), (t_clean == lt) & (lt >= 0)
    inherited = s_ok & (s_adv != ls)
    fooled = t_ok & (t_adv != lt)
    cols = {"class_index": [], "dir": [], "n_clean_correct": [], "n_inherited": [], "teacher_success": []}
    for c in [-1, *sorted(set(groups.tolist()))]:
        rows = np.ones(len(images), bool) if c == -1 else groups == c
        n_ok, n_inh, n_t = int((s_ok & rows).sum()), int((inherited & rows).sum()), int((t_ok & rows).sum())
        cols["class_index"].append(c); cols["n_clean_correct"].append(n_ok); cols["n_inherited"].append(n_inh)
        cols["dir"].append(n_inh / n_ok if n_ok else math.nan)
        cols["teacher_success"].append(int((fooled & rows).sum()) / n_t if n_t else math.nan)
    return DefectInheritance(_arrays(cols), adv, s_clean, s_adv, t_clean, t_adv, s_conf, inherited)


def _pgd_output(model, images, labels, epsilon, steps, batch_size) -> torch.Tensor:
    return attack_images(model, images, labels, attack="pgd", epsilon=epsilon, steps=steps, batch_size=batch_size)


def conductance_shift(model: nn.Module, clean: torch.Tensor, adversarial: torch.Tensor, targets,
                      layers: dict[str, nn.Module], important: dict, rows: dict, *, n_steps: int,
                      method: str = "trapezoid", baselines: float = 0.0, batch_size: int = 4,
                      clean_conductance: dict[str, np.ndarray] | None = None) -> dict:
    """Per class and layer, the important neurons' mean conductance on clean and adversarial inputs.

    Args:
        clean, adversarial: float (N, C, H, W), row i of one the attacked row i of the other.
        targets: int (N,) the class whose logit the conductance explains (as for the clean diagnosis).
        layers: name → module of ``model``.
        important: class → layer → int (k,) neuron ids.
        rows: class → int (n,) the rows of ``clean`` of that class.
        n_steps, method, baselines, batch_size: as `layer_conductance`.
        clean_conductance: layer → (N, units) already computed on ``clean`` with the same settings
            (the engine's); None: computed here.

    Returns: class → layer → (clean (k,), adversarial (k,)) float64 means over the class's rows.
    """
    kwargs = dict(baselines=baselines, n_steps=n_steps, method=method, batch_size=batch_size)
    target = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if clean_conductance is None:
        clean_conductance = layer_conductance(model, clean, target, layers, **kwargs)
    adv = layer_conductance(model, adversarial, target, layers, **kwargs)
    return {c: {n: (clean_conductance[n][r][:, important[c][n]].astype(np.float64).mean(0),
                    adv[n][r][:, important[c][n]].astype(np.float64).mean(0)) for n in layers}
            for c, r in rows.items()}


# --------------------------------------------------------------------------- the pair


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
    return RobustnessSet(_check_images(images, "the target validation images"), labels,
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
    return PairRobustness(_arrays(curves), _arrays(dirs), neurons, examples, info)


def _neuron_shift(models, options, instances, analysed, class_index, targets, important, conductance,
                  layer_names, n_steps) -> dict:
    """``robustness/neurons``: each model's important neurons, clean vs the teacher's output attack at
    ``dir_epsilon`` on the analysed target rows of each class."""
    cols = {k: [] for k in ("model", "class_index", "layer", "neuron", "clean", "adversarial", "shift", "rank")}
    classes = [c for c, r in analysed.items() if len(r)]
    if not classes:
        return _arrays(cols)
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
    return _arrays(cols)
