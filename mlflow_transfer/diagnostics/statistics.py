"""Statistical measures of Ma et al. (VAST 2020) §5.1: transferability score and confusion table.

Both summarise how the source model (trained on the source domain only) and the target model (the
transferred one) perform on the *target* validation set (the confusion table also on the source one).

A run's accuracy history starts at step 0, the model before any training step: for the target run that
is the unchanged source model, for the source run its random initialisation. Neither is a trained
epoch, so :func:`transferability_from_history` scores trained epochs only (step ≥ 1): counting the
target's step 0 would floor the score near 0 and hide negative transfer, the signal it exists for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix

from ..errors import DiagnosticsError
from ..validation import check_array, check_labels

__all__ = ["ConfusionTable", "best_trained_accuracy", "confusion_table", "transferability_from_history",
           "transferability_score"]


def _accuracy_series(values, name: str) -> np.ndarray:
    series = check_array(values, name, ndim=1, layout="(epochs,)", min_shape=(1,), finite=False,
                         hints={"shape": "Pass one accuracy per epoch."})
    if not np.all(np.isfinite(series)):
        bad = np.flatnonzero(~np.isfinite(series)).tolist()
        raise DiagnosticsError(f"Expected {name} of finite accuracies; got NaN or infinite values at epochs "
                               f"{bad}. Drop or recompute those epochs before scoring.")
    if series.min() < 0.0 or series.max() > 1.0:
        raise DiagnosticsError(f"Expected {name} as accuracies, fractions in [0, 1]; got values in "
                               f"[{series.min():g}, {series.max():g}]. Divide percentages by 100.")
    return series


def transferability_score(source_target_val: np.ndarray, target_target_val: np.ndarray) -> float:
    """Transferability score of §5.1: best target-model minus best source-model accuracy.

    Args:
        source_target_val: (E_s,) per-epoch accuracy, a fraction in [0, 1], of the *source* model on
            the target validation set. Any number of epochs ≥ 1.
        target_target_val: (E_t,) per-epoch accuracy in [0, 1] of the *target* (transferred) model
            on the same target validation set. E_t need not equal E_s.

    Returns:
        ``max(target_target_val) - max(source_target_val)``, in [-1, 1] (accuracy points as a
        fraction). Positive: transfer boosted target accuracy; negative: it hurt.

    Raises:
        DiagnosticsError: a series that is empty, not 1-D, holds NaN/inf, or leaves [0, 1].
    """
    source = _accuracy_series(source_target_val, "source_target_val")
    target = _accuracy_series(target_target_val, "target_target_val")
    return float(target.max() - source.max())


# what step 0 of each model's run is, for the message when a run has nothing after it
_BEFORE = {"source": "its random initialisation, before training",
           "target": "the unchanged source model, before fine-tuning"}
_HOW = {"source": "Train the source model for at least one epoch (source.epochs >= 1)",
        "target": "Fine-tune the target model for at least one epoch (target.epochs >= 1) and diagnose that run"}


def best_trained_accuracy(history, model: str) -> float:
    """The best accuracy of ``model``'s run over its trained epochs (step ≥ 1) only.

    Args:
        history: ``(steps, accuracies)``, two sequences of one length: the run's metric history on
            the target validation set (MLflow steps, any order; accuracies as fractions in [0, 1]).
        model: ``"source"`` or ``"target"``, for the message.

    Raises:
        DiagnosticsError: the two sequences differ in length, a step is not a whole number ≥ 0, an
            accuracy is invalid (as in :func:`transferability_score`), or no step is ≥ 1.
    """
    if model not in _BEFORE:
        raise DiagnosticsError(f"Expected model 'source' or 'target'; got {model!r}.")
    try:
        steps_in, values_in = history
    except (TypeError, ValueError):
        raise DiagnosticsError(f"Expected the {model} model's history as (steps, accuracies); got "
                               f"{type(history).__name__}.") from None
    steps = check_array(steps_in, f"{model} steps", ndim=1, layout="(epochs,)", min_shape=(1,),
                        hints={"shape": "Pass one step per logged accuracy."})
    values = _accuracy_series(values_in, f"{model} accuracies")
    if len(steps) != len(values):
        raise DiagnosticsError(f"Expected one step per accuracy in the {model} model's history; got "
                               f"{len(steps)} steps and {len(values)} accuracies.")
    if np.any(steps < 0) or np.any(steps != np.round(steps)):
        raise DiagnosticsError(f"Expected the {model} model's steps as epochs (whole numbers >= 0); got "
                               f"[{', '.join(f'{x:g}' for x in steps[:10])}].")
    trained = values[steps >= 1]
    if len(trained) == 0:
        raise DiagnosticsError(
            f"Expected the {model} run's accuracy on the target validation set for at least one trained "
            f"epoch (step >= 1); got only step 0, which is {_BEFORE[model]}, so there is no "
            f"transferability score. {_HOW[model]}.")
    return float(trained.max())


def transferability_from_history(source_history, target_history) -> float:
    """The transferability score of §5.1 from the two runs' histories, trained epochs only.

    Args:
        source_history: ``(steps, accuracies)`` of the source model on the target validation set.
        target_history: ``(steps, accuracies)`` of the target model on the same set.

    Returns:
        The best target-model accuracy over fine-tuned epochs (step ≥ 1) minus the best source-model
        accuracy over trained epochs (step ≥ 1), in [-1, 1]: negative when fine-tuning hurt. Step 0 is
        left out of both (see the module docstring): the target's is the source model itself, the
        source's its untrained initialisation.

    Raises:
        DiagnosticsError: see :func:`best_trained_accuracy`; in particular a run with only step 0.
    """
    target = best_trained_accuracy(target_history, "target")
    source = best_trained_accuracy(source_history, "source")
    return transferability_score([source], [target])


@dataclass(frozen=True)
class ConfusionTable:
    """Class-level comparison of the two models on the target validation set (§5.1, Figure 1 A).

    Rows of both matrices are the true class, columns the predicted class, in the order of
    ``classes``. For a class with no instances in ``y_true`` (``support == 0``) the accuracies and
    the difference are NaN (``None`` in :meth:`to_records`) and ``misclassified_into`` is empty.

    Attributes:
        classes: (C,) class names.
        matrix_source: (C, C) int64 confusion matrix of the source model.
        matrix_target: (C, C) int64 confusion matrix of the target model.
        support: (C,) int64 number of instances of each true class.
        source_accuracy: (C,) float64 per-class recall of the source model, in [0, 1].
        target_accuracy: (C,) float64 per-class recall of the target model, in [0, 1].
        difference: (C,) float64 ``target_accuracy - source_accuracy``.
        misclassified_into: per class, the *other* classes the target model predicted for its
            instances, as ``(class_name, count)`` pairs with count > 0, most frequent first (ties
            in class order).
    """

    classes: tuple[str, ...]
    matrix_source: np.ndarray
    matrix_target: np.ndarray
    support: np.ndarray
    source_accuracy: np.ndarray
    target_accuracy: np.ndarray
    difference: np.ndarray
    misclassified_into: tuple[tuple[tuple[str, int], ...], ...]

    def to_records(self) -> list[dict]:
        """One plain dict per class, strict-JSON-able (NaN becomes ``None``).

        Keys: ``class_index`` (int), ``class`` (str), ``support`` (int), ``source_accuracy``,
        ``target_accuracy``, ``difference`` (float or None when the class has no instances) and
        ``misclassified_into`` (list of ``[class_name, count]`` lists, most frequent first).
        """
        def number(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        return [{"class_index": c,
                 "class": name,
                 "support": int(self.support[c]),
                 "source_accuracy": number(self.source_accuracy[c]),
                 "target_accuracy": number(self.target_accuracy[c]),
                 "difference": number(self.difference[c]),
                 "misclassified_into": [[other, int(n)] for other, n in self.misclassified_into[c]]}
                for c, name in enumerate(self.classes)]


def _recall(matrix: np.ndarray, support: np.ndarray) -> np.ndarray:
    # Classes without instances have no defined recall: NaN, not 0, so they cannot be mistaken
    # for classes the model gets entirely wrong.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def confusion_table(y_true: np.ndarray, pred_source: np.ndarray, pred_target: np.ndarray,
                    classes: Sequence[str]) -> ConfusionTable:
    """Confusion table of §5.1: per-class accuracies of both models and where the target model errs.

    Args:
        y_true: (N,) int true class indices of the target validation set, in [0, C).
        pred_source: (N,) int class indices predicted by the source model.
        pred_target: (N,) int class indices predicted by the target model.
        classes: the C class names, indexed by class index (C ≥ 1, unique).

    Returns:
        A :class:`ConfusionTable` (matrices from :func:`sklearn.metrics.confusion_matrix` with
        ``labels=range(C)``).

    Raises:
        DiagnosticsError: empty or duplicated ``classes``, arrays that are not 1-D integer arrays of
            the same non-zero length, or indices outside [0, C).
    """
    names = tuple(str(c) for c in classes) if not isinstance(classes, str) else ()
    if not names:
        raise DiagnosticsError(f"Expected classes as a non-empty sequence of class names; got {classes!r:.200}.")
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise DiagnosticsError(f"Expected unique classes; got duplicates {duplicated}.")
    n_classes = len(names)
    y, ps, pt = (check_labels(values, name, n_classes)
                 for values, name in ((y_true, "y_true"), (pred_source, "pred_source"), (pred_target, "pred_target")))
    if not (len(y) == len(ps) == len(pt)) or len(y) == 0:
        raise DiagnosticsError("Expected y_true, pred_source and pred_target of the same non-zero length "
                               f"(one entry per validation instance); got {len(y)}, {len(ps)} and {len(pt)}.")
    return _confusion_table(y, ps, pt, names)


def _confusion_table(y: np.ndarray, ps: np.ndarray, pt: np.ndarray,
                     names: tuple[str, ...]) -> ConfusionTable:
    labels = np.arange(len(names))
    m_source = confusion_matrix(y, ps, labels=labels).astype(np.int64)
    m_target = confusion_matrix(y, pt, labels=labels).astype(np.int64)
    support = m_target.sum(axis=1)
    acc_source = _recall(m_source, support)
    acc_target = _recall(m_target, support)
    into = []
    for c in labels:
        others = [j for j in labels if j != c and m_target[c, j] > 0]
        # Stable sort on -count keeps class order among ties.
        others.sort(key=lambda j: -m_target[c, j])
        into.append(tuple((names[j], int(m_target[c, j])) for j in others))
    return ConfusionTable(classes=names, matrix_source=m_source, matrix_target=m_target,
                          support=support, source_accuracy=acc_source, target_accuracy=acc_target,
                          difference=acc_target - acc_source, misclassified_into=tuple(into))
