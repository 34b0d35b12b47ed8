"""Adversarial robustness of a model and of a pair (issue 13): accuracy under attack, the defect
inheritance rate (DIR, ReMoS) and which important neurons an attack moves. The attacks are
`attacks` (captum.robust's FGSM and PGD); the pair's records are assembled in `robustness_pair`.

- `robustness_curves`: accuracy per ε, attack and class (+ all classes) of one model attacked on itself.
- `defect_inheritance`: adversarial examples crafted on the teacher (``"output"``: its cross-entropy;
  ``"feature"``: the distance of its penultimate features from the clean ones) applied to the student.
- `conductance_shift`: per class and layer, the important neurons' mean conductance on clean vs
  adversarial inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..validation import check_choice, check_int, check_module
from .attacks import ATTACKS, BATCH, DIR_ATTACKS, attack_images, check_epsilon, check_images, feature_attack, \
    own_labels, predict
from .conductance import layer_conductance

__all__ = ["DefectInheritance", "as_columns", "conductance_shift", "defect_inheritance", "robustness_curves"]


def _groups(groups, labels: np.ndarray) -> np.ndarray:
    if groups is None:
        return labels
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != labels.shape:
        raise DiagnosticsError(f"Expected groups with one class index per instance ({len(labels)}); got shape "
                               f"{groups.shape}.")
    return groups


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
    images = check_images(images)
    labels = own_labels(labels, len(images), "labels")
    groups = _groups(groups, labels)
    eps = [check_epsilon(e, "each epsilon") for e in epsilons]
    for a in attacks:
        check_choice(a, "attack", ATTACKS)
    known = np.flatnonzero(labels >= 0)
    clean_correct = predict(model, images[known])[0] == labels[known]
    cols = {"attack": [], "epsilon": [], "class_index": [], "accuracy": [], "n": []}
    for attack in attacks:
        for e in eps:
            if e == 0.0:
                correct = clean_correct
            else:
                adv = attack_images(model, images[known], labels[known], attack=attack, epsilon=e,
                                    steps=pgd_steps, batch_size=batch_size)
                correct = predict(model, adv)[0] == labels[known]
            for c in [-1, *sorted(set(groups.tolist()))]:
                rows = np.ones(len(known), bool) if c == -1 else groups[known] == c
                n = int(rows.sum())
                cols["attack"].append(attack); cols["epsilon"].append(e); cols["class_index"].append(c)
                cols["accuracy"].append(float(correct[rows].mean()) if n else math.nan); cols["n"].append(n)
    return as_columns(cols)


_TEXT = ("model", "attack", "layer")
_INTEGER = ("class_index", "n", "n_clean_correct", "n_inherited", "neuron", "rank")


def as_columns(cols: dict) -> dict:
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
    images = check_images(images)
    lt = own_labels(labels_teacher, len(images), "labels_teacher")
    ls = own_labels(labels_student, len(images), "labels_student")
    groups = _groups(groups, ls)
    t_clean, _ = predict(teacher, images)
    s_clean, _ = predict(student, images)
    if attack == "output":
        if len(images):
            adv = _pgd_output(teacher, images, np.where(lt < 0, t_clean, lt), epsilon, steps, batch_size)
        else:
            adv = images.detach().cpu().clone()
    else:
        adv = feature_attack(teacher, images, epsilon=epsilon, steps=steps, seed=seed, batch_size=batch_size)
    t_adv, _ = predict(teacher, adv)
    s_adv, s_conf = predict(student, adv)
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
    return DefectInheritance(as_columns(cols), adv, s_clean, s_adv, t_clean, t_adv, s_conf, inherited)


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
