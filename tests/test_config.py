"""Recipe loading and validation: the built-in recipes, overrides, errors, flat(), source_key, roots."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from mlflow_transfer.config import DomainConfig, ModelConfig, Recipe, TrainConfig, load_recipe, parse_recipe
from mlflow_transfer.data import DOMAINS
from mlflow_transfer.errors import RecipeError
from mlflow_transfer.models import MODELS

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
DIGITS = RECIPES / "digits.yaml"


def digits_raw() -> dict:
    return yaml.safe_load(DIGITS.read_text())


def minimal_raw() -> dict:
    return {"name": "t", "data": {"source": {"name": "printed-digits"}, "target": {"name": "handwritten-digits"}}}


# --------------------------------------------------------------------------- built-in recipes


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_builtin_recipes_load_and_match_their_yaml(path):
    recipe = load_recipe(path)
    raw = yaml.safe_load(path.read_text())
    assert isinstance(recipe, Recipe)
    assert recipe.name == raw["name"]
    assert recipe.seed == raw["seed"]
    assert recipe.model.name == raw["model"]["name"] and recipe.model.name in MODELS
    for side in ("source", "target"):
        dom = getattr(recipe.data, side)
        assert dom.name == raw["data"][side]["name"] and dom.name in DOMAINS
        for key, value in raw["data"][side].items():
            assert getattr(dom, key) == value
        for key, value in raw[side].items():
            assert getattr(getattr(recipe, side), key) == value, f"{side}.{key}"
    assert recipe.data.image_size == raw["data"]["image_size"]


def test_three_builtin_recipes():
    assert {p.name for p in RECIPES.glob("*.yaml")} >= {
        "digits.yaml", "svhn_mnist.yaml", "office31_amazon_webcam.yaml"}


def test_defaults_fill_missing_keys():
    recipe = parse_recipe(minimal_raw())
    assert recipe.source == TrainConfig() and recipe.target == TrainConfig()
    assert recipe.model.name == "alexnet-32" and recipe.model.weights is None
    assert recipe.data.image_size == 32 and recipe.data.val_fraction == 0.15
    assert recipe.seed == 0


# --------------------------------------------------------------------------- overrides


def test_overrides_apply_with_yaml_typing():
    recipe = load_recipe(DIGITS, ["source.epochs=2", "data.label_budget=10", "model.name=resnet18"])
    assert recipe.source.epochs == 2 and type(recipe.source.epochs) is int
    assert recipe.data.label_budget == 10 and type(recipe.data.label_budget) is int
    assert recipe.model.name == "resnet18"
    # Everything else is as in the file.
    base = load_recipe(DIGITS)
    assert recipe.target == base.target
    assert recipe.data.source == base.data.source


def test_override_typing_float_null_and_int_to_float():
    recipe = load_recipe(DIGITS, ["target.lr=0.01", "data.label_budget=null", "source.lr=1",
                                  "data.per_class_cap=", "description=a b=c"])
    assert recipe.target.lr == 0.01 and type(recipe.target.lr) is float
    assert recipe.source.lr == 1.0 and type(recipe.source.lr) is float
    assert recipe.data.label_budget is None
    assert recipe.data.per_class_cap is None
    assert recipe.description == "a b=c"  # split at the first "=" only


def test_override_creates_a_missing_section():
    recipe = parse_recipe(minimal_raw(), ["target.epochs=3"])
    assert recipe.target.epochs == 3
    assert recipe.source.epochs == TrainConfig().epochs


def test_overrides_do_not_change_the_input_mapping():
    raw = digits_raw()
    parse_recipe(raw, ["source.epochs=2"])
    assert raw == digits_raw()


def test_override_without_equals():
    with pytest.raises(RecipeError, match="source.epochs2"):
        load_recipe(DIGITS, ["source.epochs2"])


def test_override_into_a_scalar():
    with pytest.raises(RecipeError, match="seed"):
        load_recipe(DIGITS, ["seed.x=1"])


# --------------------------------------------------------------------------- validation errors


def test_unknown_top_level_key():
    raw = digits_raw()
    raw["epochs"] = 3
    with pytest.raises(RecipeError, match=r"`epochs`.*allowed keys") as info:
        parse_recipe(raw)
    for key in ("data", "model", "source", "target", "seed"):
        assert key in str(info.value)


def test_unknown_nested_key_names_dotted_path_and_allowed_keys():
    with pytest.raises(RecipeError, match=r"`source\.epochz`") as info:
        load_recipe(DIGITS, ["source.epochz=2"])
    message = str(info.value)
    for f in dataclasses.fields(TrainConfig):
        assert f.name in message


def test_unknown_deeply_nested_key():
    with pytest.raises(RecipeError, match=r"`data\.source\.colour`") as info:
        load_recipe(DIGITS, ["data.source.colour=red"])
    for f in dataclasses.fields(DomainConfig):
        assert f.name in str(info.value)


@pytest.mark.parametrize("override, key", [
    ("source.epochs=two", "source.epochs"),
    ("source.epochs=2.5", "source.epochs"),
    ("source.epochs=true", "source.epochs"),
    ("source.lr=fast", "source.lr"),
    ("seed=[1, 2]", "seed"),
    ("model.name=3", "model.name"),
])
def test_wrong_type(override, key):
    with pytest.raises(RecipeError, match=rf"`{key}` must be of type"):
        load_recipe(DIGITS, [override])


def test_section_must_be_a_mapping():
    with pytest.raises(RecipeError, match=r"`data\.source`.*mapping"):
        load_recipe(DIGITS, ["data.source=printed-digits"])


@pytest.mark.parametrize("override, key, bound", [
    ("source.epochs=0", "source.epochs", ">= 1"),
    ("data.image_size=4", "data.image_size", ">= 8"),
    ("data.val_fraction=0.001", "data.val_fraction", ">= 0.01"),
    ("data.source.size=9", "data.source.size", ">= 10"),
    ("seed=-1", "seed", ">= 0"),
    ("data.val_fraction=0.95", "data.val_fraction", "<= 0.9"),
])
def test_value_out_of_range(override, key, bound):
    with pytest.raises(RecipeError, match=rf"`{key}` must be {bound}"):
        load_recipe(DIGITS, [override])


def test_required_non_optional_value_cannot_be_empty():
    with pytest.raises(RecipeError, match=r"`source\.epochs` must not be empty"):
        load_recipe(DIGITS, ["source.epochs=null"])


def test_missing_required_key():
    raw = minimal_raw()
    del raw["data"]["target"]
    with pytest.raises(RecipeError, match=r"`data\.target`"):
        parse_recipe(raw)


@pytest.mark.parametrize("override, key, allowed", [
    ("source.optimizer=rmsprop", "source.optimizer", ["adam", "sgd"]),
    ("target.schedule=step", "target.schedule", ["cosine", "constant"]),
    ("data.target.split=val", "data.target.split", ["train", "test"]),
])
def test_value_not_in_choices(override, key, allowed):
    path = RECIPES / "svhn_mnist.yaml" if key.startswith("data.target") else DIGITS  # mnist takes `split`
    with pytest.raises(RecipeError, match=rf"`{key}` must be one of") as info:
        load_recipe(path, [override])
    for value in allowed:
        assert repr(value) in str(info.value)
    assert "None" not in str(info.value)


def test_unknown_model_name():
    with pytest.raises(RecipeError, match=r"`model\.name`") as info:
        load_recipe(DIGITS, ["model.name=lenet"])
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize("side", ["source", "target"])
def test_unknown_domain_name(side):
    with pytest.raises(RecipeError, match=rf"`data\.{side}\.name`") as info:
        load_recipe(DIGITS, [f"data.{side}.name=cifar"])
    for name in DOMAINS:
        assert name in str(info.value)


def test_option_not_taken_by_domain():
    with pytest.raises(RecipeError, match=r"`data\.source` \(printed-digits\) does not take \['root'\]"):
        load_recipe(DIGITS, ["data.source.root=/tmp/x"])
    with pytest.raises(RecipeError, match=r"`data\.target` \(handwritten-digits\) does not take \['size'\]"):
        load_recipe(DIGITS, ["data.target.size=100"])


@pytest.mark.parametrize("model, size", [("alexnet", 32), ("alexnet", 62), ("resnet18", 16)])
def test_image_size_too_small_for_model(model, size):
    with pytest.raises(RecipeError, match=rf"{size} is too small for {model}"):
        load_recipe(DIGITS, [f"model.name={model}", f"data.image_size={size}"])


def test_image_size_at_model_minimum_is_fine():
    need = MODELS["alexnet"].min_image_size
    recipe = load_recipe(DIGITS, ["model.name=alexnet", f"data.image_size={need}"])
    assert recipe.data.image_size == need


def test_source_freeze_depth_must_be_zero():
    with pytest.raises(RecipeError, match=r"source\.freeze_depth"):
        load_recipe(DIGITS, ["source.freeze_depth=2"])
    assert load_recipe(DIGITS, ["target.freeze_depth=2"]).target.freeze_depth == 2


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {source: [unclosed\n")
    with pytest.raises(RecipeError, match="to be valid YAML; got"):
        load_recipe(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(path)


def test_empty_file_reports_missing_keys(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(RecipeError, match="missing required key"):
        load_recipe(path)


# --------------------------------------------------------------------------- flat, source_key


def _expected_flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_expected_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_flat_keys_are_dotted_and_values_match():
    recipe = load_recipe(DIGITS)
    flat = recipe.flat()
    assert flat["source.epochs"] == recipe.source.epochs
    assert flat["target.lr"] == recipe.target.lr
    assert flat["data.source.name"] == "printed-digits"
    assert flat["data.source.size"] == recipe.data.source.size
    assert flat["data.image_size"] == 32
    assert flat["model.name"] == "alexnet-32"
    assert flat["seed"] == 0 and flat["name"] == "digits"
    assert not any(isinstance(v, dict) for v in flat.values())
    # Every leaf field of the dataclasses, reached by walking the dotted key.
    assert flat == _expected_flat(dataclasses.asdict(recipe))
    for key, value in flat.items():
        node = recipe
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key
    n_train = len(dataclasses.fields(TrainConfig))
    n_domain = len(dataclasses.fields(DomainConfig))
    n_model = len(dataclasses.fields(ModelConfig))
    assert len(flat) == 3 + (5 + 2 * n_domain) + n_model + 2 * n_train + 1  # name/seed/description, data, model, runs, runtime


CODE = "abc123"


def test_source_key_stable_for_equal_recipes():
    a = load_recipe(DIGITS)
    b = parse_recipe(digits_raw())
    assert a.source_key(CODE) == b.source_key(CODE)
    assert len(a.source_key(CODE)) == 16
    int(a.source_key(CODE), 16)  # hexadecimal


@pytest.mark.parametrize("override", ["source.lr=0.002", "seed=1", "data.source.size=100",
                                      "source.epochs=9", "model.name=resnet18", "data.image_size=48"])
def test_source_key_changes_with_source_values(override):
    base = load_recipe(DIGITS)
    assert load_recipe(DIGITS, [override]).source_key(CODE) != base.source_key(CODE)


def test_source_key_changes_with_code_version():
    recipe = load_recipe(DIGITS)
    assert recipe.source_key("v1") != recipe.source_key("v2")


@pytest.mark.parametrize("overrides", [
    ["target.lr=0.1"], ["target.epochs=1", "target.freeze_depth=3", "target.optimizer=sgd"],
    ["description=something else"], ["data.label_budget=5"], ["data.label_budget=50"],
])
def test_source_key_ignores_target_training(overrides):
    base = load_recipe(DIGITS)
    changed = load_recipe(DIGITS, overrides)
    assert changed != base
    assert changed.source_key(CODE) == base.source_key(CODE)


# --------------------------------------------------------------------------- resolve_root


def _svhn_recipe(*overrides):
    return load_recipe(RECIPES / "svhn_mnist.yaml", list(overrides))


def test_resolve_root_relative_joins_data_root(tmp_path):
    recipe = _svhn_recipe(f"data.root={tmp_path}")
    assert Path(recipe.resolve_root(recipe.data.source)) == tmp_path / "svhn"
    assert Path(recipe.resolve_root(recipe.data.target)) == tmp_path / "mnist"


def test_resolve_root_absolute_stays(tmp_path):
    absolute = tmp_path / "elsewhere" / "svhn"
    recipe = _svhn_recipe(f"data.root={tmp_path / 'data'}", f"data.source.root={absolute}")
    assert Path(recipe.resolve_root(recipe.data.source)) == absolute
    assert Path(recipe.resolve_root(recipe.data.target)) == tmp_path / "data" / "mnist"


def test_resolve_root_relative_without_data_root_stays_relative():
    recipe = _svhn_recipe()
    assert recipe.data.root is None
    assert recipe.resolve_root(recipe.data.source) == "svhn"


def test_resolve_root_without_domain_root_is_data_root(tmp_path):
    recipe = load_recipe(RECIPES / "office31_amazon_webcam.yaml", [f"data.root={tmp_path}"])
    assert recipe.resolve_root(recipe.data.source) == str(tmp_path)
    assert load_recipe(DIGITS).resolve_root(load_recipe(DIGITS).data.source) is None


def test_resolve_root_expands_user():
    recipe = _svhn_recipe("data.root=~/datasets")
    assert recipe.resolve_root(recipe.data.source) == os.path.join(os.path.expanduser("~"), "datasets", "svhn")


# --------------------------------------------------------------------------- transfer methods (issue 13)


def test_transfer_method_defaults_and_values():
    recipe = load_recipe(DIGITS)
    assert recipe.target.method == "finetune" and recipe.target.slice_ratio == 0.05
    sliced = load_recipe(DIGITS, ["target.method=slice", "target.slice_ratio=0.1"])
    assert sliced.target.method == "slice" and sliced.target.slice_ratio == 0.1
    assert load_recipe(DIGITS, ["target.method=scratch"]).target.method == "scratch"


def test_transfer_method_must_be_one_of_three():
    with pytest.raises(RecipeError, match=r"`target\.method` must be one of") as info:
        load_recipe(DIGITS, ["target.method=prune"])
    for value in ("finetune", "slice", "scratch"):
        assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["0", "1", "-1", "1.5", "0.0"])
def test_slice_ratio_strictly_inside_zero_one(value):
    with pytest.raises(RecipeError, match=r"Expected `target\.slice_ratio` strictly between 0\.0 and 1\.0; "
                                          r"got -?[0-9.]+\. Give e\.g\. --set target\.slice_ratio=0\.05"):
        load_recipe(DIGITS, [f"target.slice_ratio={value}"])


@pytest.mark.parametrize("override", ["source.method=slice", "source.method=scratch", "source.slice_ratio=0.1"])
def test_transfer_method_on_source_is_refused_naming_the_key(override):
    key = re.escape(override.split("=")[0])
    with pytest.raises(RecipeError, match=rf"Expected `{key}` to be unset.*set `target\."):
        load_recipe(DIGITS, [override])


@pytest.mark.parametrize("overrides", [["target.method=slice"], ["target.method=scratch", "target.slice_ratio=0.2"]])
def test_source_key_ignores_the_transfer_method(overrides):
    base = load_recipe(DIGITS)
    assert load_recipe(DIGITS, overrides).source_key(CODE) == base.source_key(CODE)


def test_source_key_unchanged_by_the_new_keys():
    # the key hashes the source section without `method`/`slice_ratio`, as it was before they existed
    import hashlib
    import json

    recipe = load_recipe(DIGITS)
    relevant = {k: v for k, v in recipe.to_dict().items() if k not in ("target", "description", "runtime")}
    relevant["source"] = {k: v for k, v in relevant["source"].items() if k not in ("method", "slice_ratio")}
    blob = json.dumps([relevant, CODE], sort_keys=True, default=str)
    assert recipe.source_key(CODE) == hashlib.sha256(blob.encode()).hexdigest()[:16]
