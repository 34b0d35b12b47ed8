"""Label spaces that differ (issue 12): the mapping between the pair's labels and each model's own, by
class name, checked on hand-worked cases; the undefined accuracies; the recipe keys and their errors; and
the data a recipe with other target classes yields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.tracking import tiny_recipe

from mlflow_transfer.data import select_classes
from mlflow_transfer.data.domain import tensor_domain
from mlflow_transfer.diagnostics.labelspaces import label_maps, unknown_accuracy_nan
from mlflow_transfer.diagnostics.statistics import confusion_table
from mlflow_transfer.errors import DataError, DiagnosticsError, RecipeError
from mlflow_transfer.models import build_model, with_new_head
from mlflow_transfer.tracking.context import prepare_data

# the pair's label space: the target's classes, then the source's others
PAIR = ("5", "6", "0", "1")
OWN = {"source": ("0", "1", "5"), "target": ("5", "6")}


def test_label_maps_go_by_class_name_both_ways():
    to_own, from_own, shared = label_maps(PAIR, OWN)
    # hand-worked: pair label 0 is "5", the source's label 2 and the target's 0; "6" is unknown to the source
    np.testing.assert_array_equal(to_own["source"], [2, -1, 0, 1])
    np.testing.assert_array_equal(to_own["target"], [0, 1, -1, -1])
    np.testing.assert_array_equal(from_own["source"], [2, 3, 0])
    np.testing.assert_array_equal(from_own["target"], [0, 1])
    assert shared == ("5",)
    for role in OWN:  # round trip on the classes the model knows
        np.testing.assert_array_equal(to_own[role][from_own[role]], np.arange(len(OWN[role])))


def test_one_label_space_is_the_identity_and_all_shared():
    to_own, from_own, shared = label_maps(("a", "b", "c"), None)
    assert shared == ("a", "b", "c")
    for maps in (to_own, from_own):
        for role in ("source", "target"):
            np.testing.assert_array_equal(maps[role], [0, 1, 2])


def test_nothing_shared():
    assert label_maps(("5", "6", "0"), {"source": ("0",), "target": ("5", "6")})[2] == ()


@pytest.mark.parametrize("bad", [{"source": ("0", "x"), "target": ("5",)}, {"source": ("0", "0"), "target": ("5",)},
                                 {"target": ("5",)}])
def test_label_maps_refuse_classes_outside_the_pair_or_repeated(bad):
    with pytest.raises(DiagnosticsError, match="Expected model_classes"):
        label_maps(PAIR, bad)


def test_a_models_accuracy_on_a_class_it_does_not_know_is_nan():
    # target validation: two "5", one "6"; the source predicts "0" and "5", the target "5" and "6"
    y = np.array([0, 0, 1])
    table = confusion_table(y, np.array([2, 0, 0]), np.array([0, 0, 1]), PAIR)
    to_own, _, _ = label_maps(PAIR, OWN)
    fixed = unknown_accuracy_nan(table, to_own)
    np.testing.assert_allclose(fixed.source_accuracy[:2], [0.5, np.nan])  # "6": unknown to the source
    np.testing.assert_allclose(fixed.target_accuracy[:2], [1.0, 1.0])
    np.testing.assert_allclose(fixed.difference[:2], [0.5, np.nan])
    assert np.isnan(table.source_accuracy[1]) is np.False_  # the table before: a misleading 0


def test_select_classes_filters_and_relabels_in_the_order_given():
    labels = np.array([0, 1, 2, 3, 2, 0])
    domain = tensor_domain("d", ("a", "b", "c", "d"), torch.arange(6.0).reshape(6, 1, 1, 1).expand(6, 3, 1, 1), labels)
    chosen = select_classes(domain, ["c", "a"], "target.classes")
    assert chosen.classes == ("c", "a")
    np.testing.assert_array_equal(chosen.targets, [1, 0, 0, 1])  # items 0, 2, 4, 5 of the domain; "c" is 0
    assert [(float(chosen.dataset[i][0][0, 0, 0]), chosen.dataset[i][1]) for i in range(4)] == \
        [(0.0, 1), (2.0, 0), (4.0, 0), (5.0, 1)]
    with pytest.raises(DataError, match=r"unknown class\(es\) \['z'\].*classes are \['a', 'b', 'c', 'd'\]"):
        select_classes(domain, ["a", "z"], "target.classes")


def test_recipe_keys_and_their_errors():
    recipe = tiny_recipe("target.classes=[4, 3]", "target.new_head=true")
    assert recipe.target.classes == ("4", "3") and recipe.target.new_head  # YAML numbers are class names
    assert recipe.source.classes is None and not recipe.source.new_head
    assert recipe.flat()["target.classes"] == ("4", "3")
    assert tiny_recipe().source_key("v") != recipe.source_key("v")  # the source is also scored on them
    with pytest.raises(RecipeError, match="`source.new_head` must be false"):
        tiny_recipe("source.new_head=true")
    with pytest.raises(RecipeError, match=r"differ from `source.classes`.*Set `target.new_head: true`"):
        tiny_recipe("source.classes=[0, 1]", "target.classes=[2, 3]")
    with pytest.raises(RecipeError, match="non-empty list of class names"):
        tiny_recipe("target.classes=[]")
    with pytest.raises(RecipeError, match="non-empty list of class names"):
        tiny_recipe("target.classes=3")
    with pytest.raises(RecipeError, match=r"each class once; got \['3'\]"):
        tiny_recipe("target.classes=[3, 3]")


def test_prepare_data_keeps_the_target_classes_in_their_order():
    data = prepare_data(tiny_recipe("target.classes=[7, 2]", "target.new_head=true"))
    assert data.source_classes == tuple("0123456789") and data.target_classes == ("7", "2")
    assert data.shared_classes == ("7", "2") and data.pair_classes == ("7", "2", *"01345689")
    assert set(data.target.domain.targets) == {0, 1}
    # the source run is scored on the target's classes in its own labels: "7" is its label 7
    sets = data.eval_sets("source")
    assert {int(sets["target_val"][i][1]) for i in range(len(sets["target_val"]))} == {7, 2}
    target_sets = data.eval_sets("target")
    assert {int(target_sets["source_val"][i][1]) for i in range(len(target_sets["source_val"]))} == {0, 1}


def test_prepare_data_errors_name_the_fix():
    with pytest.raises(DataError, match=r"unknown class\(es\) \['cat'\].*'0', '1'"):
        prepare_data(tiny_recipe("target.classes=[cat]", "target.new_head=true"))
    with pytest.raises(DataError, match="set `target.new_head: true`"):
        prepare_data(tiny_recipe("target.classes=[0, 1]"))


def test_a_new_head_keeps_every_other_weight_and_is_seeded():
    torch.manual_seed(1)
    source = build_model("alexnet-32", 10)
    a, b = with_new_head(source, 3, seed=5), with_new_head(source, 3, seed=5)
    assert a.analysis_layers["fc8"].out_features == 3
    for name, value in source.state_dict().items():
        if not name.startswith("head.fc8"):
            assert torch.equal(a.state_dict()[name], value), name
    assert torch.equal(a.analysis_layers["fc8"].weight, b.analysis_layers["fc8"].weight)
    assert not torch.equal(a.analysis_layers["fc8"].weight, with_new_head(source, 3, seed=6).analysis_layers["fc8"].weight)


def test_the_command_line_takes_a_class_list_and_names_unknown_classes(tracking_store):
    from helpers.cli import invoke, one_error_line
    from helpers.tracking import TINY

    # the list's commas stay in the value: `--set` splits only outside brackets
    proc = invoke("train-source", "--set", f"{TINY},target.classes=[5,cat],target.new_head=true")
    one_error_line(proc, "unknown class(es) ['cat']", "The domain's classes are ['0', '1'")
    assert tracking_store.runs() == []  # refused before any run started
