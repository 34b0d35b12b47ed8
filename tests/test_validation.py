"""The one validation module: each check returns the value, raises the caller's error class, and says
"Expected <what>; got <what arrived>."."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from torch import nn

from mlflow_transfer.errors import DataError, DiagnosticsError
from mlflow_transfer.validation import (check_array, check_choice, check_fraction, check_int, check_labels,
                                        check_layers_of, check_module, check_number, check_probabilities)

STYLE = re.compile(r"Expected .+; got .+\.( .+)?", re.S)


def _message(call) -> str:
    with pytest.raises(DiagnosticsError) as info:
        call()
    text = str(info.value)
    assert STYLE.fullmatch(text), text
    return text


def test_check_int():
    assert check_int(3, "k", low=1) == 3 and type(check_int(np.int64(3), "k")) is int
    assert "Expected k as an integer in [1, 4] (four); got 5." == _message(
        lambda: check_int(5, "k", low=1, high=4, doc="(four)"))
    for bad in (True, 2.0, "2", None, 0):
        _message(lambda: check_int(bad, "k", low=1))
    with pytest.raises(DataError, match=r"Expected size as an integer >= 10; got 3\."):
        check_int(3, "size", low=10, error=DataError)


def test_check_number_and_fraction():
    assert check_number(2, "C", low=0, low_open=True) == 2.0
    assert check_number(-math.inf, "t", high=1, high_open=True, finite=False) == -math.inf
    assert _message(lambda: check_number(0.0, "C", low=0, low_open=True)) == \
        "Expected C as a finite number > 0; got 0.0."
    for bad in (math.nan, math.inf, True, "1", None):
        _message(lambda: check_number(bad, "C"))
    _message(lambda: check_number(math.nan, "t", finite=False))
    assert check_fraction(1, "fraction") == 1.0 and check_fraction(0, "share", allow_zero=True) == 0.0
    assert _message(lambda: check_fraction(0, "fraction")) == "Expected fraction as a finite number in (0, 1]; got 0."


def test_check_choice():
    assert check_choice("max", "reduce", ("max", "none")) == "max"
    assert _message(lambda: check_choice("mean", "reduce", ("max", "none"))) == \
        "Expected reduce as one of ('max', 'none'); got 'mean'."
    _message(lambda: check_choice(["max"], "reduce", ("max", "none")))


def test_check_array():
    out = check_array([[1, 2]], "x", min_shape=(1, 1))
    assert out.dtype == np.float64 and out.shape == (1, 2)
    assert check_array(np.array([[1, 2]]), "x", kind="integer").dtype == np.int64
    assert _message(lambda: check_array(np.zeros(3), "x", layout="(a, b)")) == \
        "Expected x as a 2-D array of shape (a, b); got shape (3,)."
    assert _message(lambda: check_array(np.zeros((0, 2)), "x", min_shape=(1, 1), hints={"shape": "Skip it."})) \
        == "Expected x as a 2-D array with sizes >= 1 × >= 1; got shape (0, 2). Skip it."
    assert "got 2 NaN or infinite value(s)" in _message(lambda: check_array([[np.nan, np.inf]], "x"))
    assert check_array([[np.nan]], "x", finite=False).shape == (1, 1)
    for bad in (np.array([["a"]]), np.array([[True]]), np.ones((1, 1), complex), [[1, "a"]]):
        assert "real numbers" in _message(lambda: check_array(bad, "x"))
    assert "of integers; got dtype float64" in _message(lambda: check_array([[1.0]], "x", kind="integer"))
    assert check_array(np.zeros((0, 2)), "x", kind="integer").dtype == np.int64  # empty: any dtype
    assert "of booleans; got dtype int64" in _message(lambda: check_array(np.array([1]), "f", ndim=1, kind="bool"))


def test_check_labels():
    np.testing.assert_array_equal(check_labels([0, 2], "y", 3), [0, 2])
    assert _message(lambda: check_labels([0, 3], "y", 3)).startswith(
        "Expected y as class indices in [0, 3); got values in [0, 3].")
    assert _message(lambda: check_labels([0], "y", 3, length=2)) == \
        "Expected y with 2 entries (one per instance); got 1."
    assert "Pass argmax" in _message(lambda: check_labels([0.5], "y", 3))


def test_check_probabilities():
    probs = check_probabilities([[0.25, 0.75], [1, 0]], "p")
    assert probs.dtype == np.float64 and probs.shape == (2, 2)
    check_probabilities([[0.5, 0.5 + 9e-4]], "p")  # float32 softmax rounding passes
    assert _message(lambda: check_probabilities([[0.5, 0.6]], "p")) == (
        "Expected p as probabilities (rows summing to 1); got row 0 summing to 1.1 (1 row(s) off by more "
        "than 0.001). Pass softmax outputs, not logits or scores.")
    assert "negative value in row 1 (-0.5)" in _message(lambda: check_probabilities([[1, 0], [1.5, -0.5]], "p"))
    assert "got shape (2,)" in _message(lambda: check_probabilities([0.5, 0.5], "p"))
    assert "1 NaN or infinite" in _message(lambda: check_probabilities([[np.nan, 1.0]], "p"))


def test_check_module_and_layers_of():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert check_module(model) is model
    assert _message(lambda: check_module("net")) == "Expected model as a torch.nn.Module; got str."
    layers = check_layers_of(model, {"fc": model[0]})
    assert list(layers) == ["fc"] and layers["fc"] is model[0]
    assert "got dict with 0 entries" in _message(lambda: check_layers_of(model, {}))
    assert "got list" in _message(lambda: check_layers_of(model, [model[0]]))
    assert "keyed by layer names" in _message(lambda: check_layers_of(model, {1: model[0]}))
    assert "got str" in _message(lambda: check_layers_of(model, {"fc": "fc"}))
    assert "'x' (Linear), which are not modules of the model" in _message(
        lambda: check_layers_of(model, {"x": nn.Linear(2, 2)}))
    assert "same module under two names" in _message(lambda: check_layers_of(model, {"a": model[0], "b": model[0]}))


def test_no_private_check_helpers_left_in_the_shared_shapes():
    """The generic checks live in validation only: no diagnostics module defines its own int,
    positive-int, finite or layers-of-model check any more."""
    from mlflow_transfer.diagnostics import (cka, conductance, discriminability, engine, features, instances,
                                             ranking, similarity, statistics, weights)

    gone = {"_check_int", "_check_positive_int", "_check_finite", "_check_layers_in_model", "_check_layers",
            "_check_inputs", "_check_conductance", "_labels", "_check_target_type", "_check_target_range"}
    for module in (cka, conductance, discriminability, engine, features, instances, ranking, similarity,
                   statistics, weights):
        assert not gone & set(vars(module)), module.__name__
