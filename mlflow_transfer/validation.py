"""Input checks, one module for all of them (after scikit-learn's ``sklearn/utils/validation.py``).

Ids, names and paths that arrive from outside (a URL, a CLI option, a tag, a manifest) and the
arguments of the diagnostics (integers, numbers in a range, arrays, label vectors, layers of a model)
pass one of these before they are used. Each check returns the value it accepted (converted: an int,
a float, a numpy array) or raises the `TransferError` subclass its caller names, with a message in
one style: "Expected <what>; got <what arrived>. <how to fix>". Imports nothing heavy at the top (no
torch, no MLflow), so the app and the bundle reader can use it; the checks of modules import torch
when called.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import DiagnosticsError, RunLookupError, TransferError

# MLflow's own rule for run ids (mlflow.utils.validation), ASCII only and matched whole: `$` alone
# would accept a trailing newline.
_RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}", re.ASCII)


def _shown(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def check_run_id(value, what: str = "run id", error: type[TransferError] = RunLookupError) -> str:
    """``value`` if it is a well-formed MLflow run (or experiment) id; else ``error``.

    Ids arrive in URLs, tags and command lines and end up in file paths and queries: nothing that
    fails this pattern is looked up, joined to a path or shown unescaped.
    """
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value):
        raise error(f"Expected a {what} of letters, digits, '_' or '-' (at most 256, as MLflow makes them); "
                    f"got {_shown(value)}. Copy the id from `mlflow ui` or `mlflow runs list`.")
    return value


def check_relative_path(value, what: str = "path", error: type[TransferError] = TransferError) -> str:
    """``value`` if it is a relative POSIX path that stays where it is joined (no absolute path, no
    ``..``, ``.`` or empty segment, no backslash, NUL or control character); else ``error``."""
    if not isinstance(value, str) or not value:
        raise error(f"Expected a {what} as a non-empty relative path; got {_shown(value)}.")
    bad = (value.startswith("/") or "\\" in value or any(ord(ch) < 32 for ch in value)
           or any(part in ("", ".", "..") for part in value.split("/")) or PurePosixPath(value).is_absolute()
           or re.match(r"^[A-Za-z]:", value) is not None)
    if bad:
        raise error(f"Expected a {what} relative to its folder, without '..', '.', empty or absolute parts; "
                    f"got {_shown(value)}.")
    return value


def contained(root: str | Path, relative: str, what: str = "path",
              error: type[TransferError] = TransferError) -> Path:
    """``root / relative`` resolved, after checking that it stays inside ``root`` once symlinks are
    followed (a link pointing out of the folder is refused like ``..``)."""
    check_relative_path(relative, what, error)
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if path != base and base not in path.parents:
        raise error(f"Expected a {what} inside {base}; got {_shown(relative)}, which leads to {path}.")
    return path


def check_no_symlinks(root: str | Path, relative: str, what: str = "path",
                      error: type[TransferError] = TransferError) -> Path:
    """``root / relative`` (not resolved) after checking the relative path and that neither it nor any
    folder between it and ``root`` is a symbolic link: a link inside a folder we read from (a bundle,
    a cache) could point anywhere, so none is followed. ``root`` itself may be a link."""
    check_relative_path(relative, what, error)
    path = Path(root)
    for part in relative.split("/"):
        path = path / part
        if path.is_symlink():
            raise error(f"Expected a {what} of plain files and folders; got {_shown(relative)}, where "
                        f"{path} is a symbolic link. Replace the link by the file itself, or recreate the folder.")
    return path


# --------------------------------------------------------------------------- numbers


def _interval(low, high, low_open: bool = False, high_open: bool = False) -> str:
    if high is None:
        return f"> {low:g}" if low_open else f">= {low:g}"
    if low is None:
        return f"< {high:g}" if high_open else f"<= {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_int(value, name: str, *, low: int | None = None, high: int | None = None, doc: str = "",
              error: type[TransferError] = DiagnosticsError) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) in [``low``, ``high``]; else ``error``.

    ``doc`` says what the bounds mean, e.g. "(the layer has 6 neurons)".
    """
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok and ((low is not None and value < low) or (high is not None and value > high)):
        ok = False
    if not ok:
        where = f" {_interval(low, high)}" if low is not None or high is not None else ""
        raise error(f"Expected {name} as an integer{where}{' ' + doc if doc else ''}; got {_shown(value)}.")
    return int(value)


def check_number(value, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, finite: bool = True, doc: str = "",
                 error: type[TransferError] = DiagnosticsError) -> float:
    """``value`` as a ``float`` if it is a real number (not a bool, not NaN; finite unless
    ``finite=False``) in the interval from ``low`` to ``high`` (open ends as asked); else ``error``.
    ``doc`` explains the range."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value) \
        and (math.isfinite(value) or not finite)
    if ok and low is not None and (value <= low if low_open else value < low):
        ok = False
    if ok and high is not None and (value >= high if high_open else value > high):
        ok = False
    if not ok:
        where = f" {_interval(low, high, low_open, high_open)}" if low is not None or high is not None else ""
        raise error(f"Expected {name} as a {'finite ' if finite else ''}number{where}{' ' + doc if doc else ''}; "
                    f"got {_shown(value)}.")
    return float(value)


def check_fraction(value, name: str, *, allow_zero: bool = False, doc: str = "",
                   error: type[TransferError] = DiagnosticsError) -> float:
    """A share of a whole: a number in (0, 1] (or [0, 1] with ``allow_zero``)."""
    return check_number(value, name, low=0.0, high=1.0, low_open=not allow_zero, doc=doc, error=error)


def check_choice(value, name: str, choices, error: type[TransferError] = DiagnosticsError):
    """``value`` if it is one of ``choices``; else ``error`` listing them."""
    if isinstance(value, (list, dict, set)) or value not in tuple(choices):
        raise error(f"Expected {name} as one of {tuple(choices)}; got {_shown(value)}.")
    return value


# --------------------------------------------------------------------------- arrays

_KINDS = {"real": "real numbers", "integer": "integers", "bool": "booleans"}


def check_array(value, name: str, *, ndim: int | None = 2, layout: str = "", kind: str = "real",
                min_shape: tuple[int, ...] = (), finite: bool = True, hints: Mapping[str, str] | None = None,
                error: type[TransferError] = DiagnosticsError) -> np.ndarray:
    """``value`` as a numpy array after checking its rank, size, element kind and finiteness.

    Args:
        value: anything :func:`numpy.asarray` reads.
        name: what the array is, as the message names it (e.g. "the source conductance").
        ndim: the required number of dimensions (None: any).
        layout: the expected shape in words, e.g. "(instances, neurons)".
        kind: "real" (ints and floats; returned as float64), "integer" (returned as int64) or
            "bool". An empty array passes the kind check.
        min_shape: the least size of each leading dimension, e.g. (1, 1) for non-empty rows and columns.
        finite: refuse NaN and infinities (real arrays).
        hints: how to fix, appended to the message of a failed check: keys "shape" (rank or size),
            "kind" and "finite".
    """
    hints = hints or {}

    def fail(expected: str, got: str, key: str):
        hint = hints.get(key, "")
        raise error(f"Expected {name} as {expected}; got {got}.{' ' + hint if hint else ''}")

    what = f"a {ndim}-D array" if ndim is not None else "an array"
    shape = f" of shape {layout}" if layout else ""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        fail(f"{what}{shape} of {_KINDS[kind]}", f"{type(value).__name__}, which numpy cannot read ({exc})",
             "kind")
    if array.dtype == object:
        try:
            array = np.asarray(value, dtype=np.float64 if kind == "real" else None)
        except (TypeError, ValueError) as exc:
            fail(f"{what}{shape} of {_KINDS[kind]}", f"values numpy cannot read as numbers ({exc})", "kind")
    if ndim is not None and array.ndim != ndim:
        fail(f"{what}{shape}", f"shape {array.shape}", "shape")
    if any(array.shape[i] < least for i, least in enumerate(min_shape)):
        sizes = " × ".join(f">= {least}" for least in min_shape)
        fail(f"{what}{shape} with sizes {sizes}", f"shape {array.shape}", "shape")
    if array.size:
        ok = {"real": np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer),
              "integer": np.issubdtype(array.dtype, np.integer),
              "bool": array.dtype == np.bool_}[kind]
        if not ok or array.dtype == np.bool_ and kind != "bool":
            fail(f"{what}{shape} of {_KINDS[kind]}", f"dtype {array.dtype}", "kind")
    if kind == "real":
        array = array.astype(np.float64, copy=False)
        if finite and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            fail(f"{what}{shape} of finite values", f"{bad} NaN or infinite value(s)", "finite")
    elif kind == "integer":
        array = array.astype(np.int64, copy=False)
    return array


def check_labels(value, name: str, n_classes: int, *, length: int | None = None,
                 error: type[TransferError] = DiagnosticsError) -> np.ndarray:
    """``value`` as an int64 vector of class indices in [0, ``n_classes``) (of ``length`` entries
    when given); else ``error``."""
    labels = check_array(value, name, ndim=1, layout="(instances,)", kind="integer", finite=False,
                         hints={"kind": "Pass argmax predictions or integer targets, not scores or names."},
                         error=error)
    if length is not None and len(labels) != length:
        raise error(f"Expected {name} with {length} entries (one per instance); got {len(labels)}.")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise error(f"Expected {name} as class indices in [0, {n_classes}); got values in "
                    f"[{labels.min()}, {labels.max()}]. Check that the class list names every class.")
    return labels


def check_probabilities(value, name: str, *, layout: str = "(instances, classes)", atol: float = 1e-3,
                        error: type[TransferError] = DiagnosticsError) -> np.ndarray:
    """``value`` as a float64 (N, C) array whose rows are probability distributions (finite,
    non-negative, summing to 1 within ``atol``: float32 softmax rounding); else ``error``."""
    probs = check_array(value, name, ndim=2, layout=layout, min_shape=(1, 1),
                        hints={"shape": "Pass one row of class probabilities per instance.",
                               "finite": "Check the model's logits for NaN (a diverged run)."}, error=error)
    if (probs < 0).any():
        row = int(np.argwhere(probs < 0)[0, 0])
        raise error(f"Expected {name} as probabilities (rows of values >= 0 summing to 1); got a negative "
                    f"value in row {row} ({probs[row].min():g}). Pass softmax outputs, not logits.")
    sums = probs.sum(1)
    off = np.abs(sums - 1.0) > atol
    if off.any():
        row = int(np.argmax(off))
        raise error(f"Expected {name} as probabilities (rows summing to 1); got row {row} summing to "
                    f"{sums[row]:g} ({int(off.sum())} row(s) off by more than {atol:g}). Pass softmax "
                    f"outputs, not logits or scores.")
    return probs


# --------------------------------------------------------------------------- models


def check_module(value, name: str = "model", error: type[TransferError] = DiagnosticsError):
    """``value`` if it is a ``torch.nn.Module``; else ``error``."""
    from torch import nn

    if not isinstance(value, nn.Module):
        raise error(f"Expected {name} as a torch.nn.Module; got {type(value).__name__}.")
    return value


def check_layers_of(model, layers, name: str = "layers",
                    error: type[TransferError] = DiagnosticsError) -> "OrderedDict[str, object]":
    """``layers`` as an ordered name → module mapping after checking that it is non-empty, that every
    name is a string and every module a distinct submodule of ``model``; else ``error``."""
    from torch import nn

    if not isinstance(layers, Mapping) or not layers:
        got = f"{type(layers).__name__} with {len(layers)} entries" if isinstance(layers, Mapping) \
            else type(layers).__name__
        raise error(f"Expected {name} as a non-empty mapping of name → module of the model; got {got}.")
    own = {id(m) for m in model.modules()}
    for key, module in layers.items():
        if not isinstance(key, str):
            raise error(f"Expected {name} keyed by layer names (strings); got {_shown(key)}.")
        if not isinstance(module, nn.Module):
            raise error(f"Expected layer {key!r} as a torch.nn.Module; got {type(module).__name__}.")
    foreign = [key for key, module in layers.items() if id(module) not in own]
    if foreign:
        kinds = ", ".join(f"{k!r} ({type(layers[k]).__name__})" for k in foreign)
        raise error(f"Expected {name} as modules of the model; got {kinds}, which are not modules of "
                    f"the model. Pass modules taken from this model (e.g. model.analysis_layers).")
    if len({id(m) for m in layers.values()}) != len(layers):
        raise error(f"Expected {name} as distinct modules; got the same module under two names: {list(layers)}.")
    return OrderedDict(layers)
