"""Recipe schema: what an experiment is (domains, model, training of both runs, seed).

The only YAML parser of the package. Loading validates everything: an unknown key or a bad value is
a :class:`RecipeError` naming the key (as a dotted path) and the allowed keys or values. Sweeps (issue 15)
are validated here too, through the recipe's own checks (`sweep_settings`).

This module is long because the recipe schema, its YAML guard and the sweep grid (which reuses both) live together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import RecipeError


def _choice(*values):
    return {"choices": values}


@dataclass(frozen=True)
class DomainConfig:
    """One data domain: a registry name and the options that domain takes."""

    name: str
    root: str | None = None     # local folder (external datasets); relative to data.root
    subset: str | None = None   # ImageFolder sub-folder, e.g. "amazon" in Office-31
    split: str | None = field(default=None, metadata=_choice(None, "train", "test"))
    size: int | None = field(default=None, metadata={"min": 10})  # printed-digits: images rendered


@dataclass(frozen=True)
class DataConfig:
    source: DomainConfig
    target: DomainConfig
    root: str | None = None          # folder that relative domain roots are resolved against
    image_size: int = field(default=32, metadata={"min": 8, "max": 1024})
    val_fraction: float = field(default=0.15, metadata={"min": 0.01, "max": 0.9})
    per_class_cap: int | None = field(default=None, metadata={"min": 2})
    label_budget: int | None = field(default=None, metadata={"min": 1})  # target labels per class


@dataclass(frozen=True)
class ModelConfig:
    name: str = "alexnet-32"
    weights: str | None = None  # local state-dict file for the source model's initialisation
    # A logged foreign model's input normalisation, "0.485,0.456,0.406" (one value or one per channel):
    # applied in front of it (images stay in [0, 1] everywhere else); registry models ignore it.
    mean: str | None = field(default=None, metadata={"numbers_as_text": True})
    std: str | None = field(default=None, metadata={"numbers_as_text": True})

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) per channel for an adapted model, or None (checked by `parse_recipe`)."""
        if self.mean is None and self.std is None:
            return None
        return _floats(self.mean or "0", "model.mean"), _floats(self.std or "1", "model.std")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=5, metadata={"min": 1, "max": 1000})
    lr: float = field(default=1e-3, metadata={"min": 1e-8, "max": 10.0})
    batch_size: int = field(default=64, metadata={"min": 1, "max": 65536})
    optimizer: str = field(default="adam", metadata=_choice("adam", "sgd"))
    schedule: str = field(default="cosine", metadata=_choice("cosine", "constant"))  # lr per batch
    momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    freeze_depth: int = field(default=0, metadata={"min": 0})  # first k analysis layers frozen
    # issue 12: the classes of this run's domain to keep (None: all), relabelled 0..m-1 in this order
    classes: tuple[str, ...] | None = None
    new_head: bool = False  # target only: replace the source's last layer by a fresh one of len(classes)
    model_uri: str | None = None  # source only: a logged model (runs:/…, models:/…) as the source, untrained
    # issue 13, target only: how the target starts — the source's weights (finetune), those weights with
    # ReMoS slicing applied first (slice), or freshly initialised weights trained on the target (scratch)
    method: str = field(default="finetune", metadata=_choice("finetune", "slice", "scratch"))
    slice_ratio: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0, "open": True})  # method slice


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the work runs; not part of what the experiment is (see `Recipe.source_key`)."""

    # auto = CUDA if present, else MPS, else CPU (mlflow_transfer.runtime.resolve_device); --device overrides
    device: str = field(default="auto", metadata=_choice("auto", "cpu", "cuda", "mps"))


@dataclass(frozen=True)
class Recipe:
    """A whole experiment; see recipes/*.yaml for annotated examples."""

    name: str
    data: DataConfig
    model: ModelConfig = ModelConfig()
    source: TrainConfig = TrainConfig()
    target: TrainConfig = TrainConfig()
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})  # torch and numpy take 32 bits
    description: str = ""
    runtime: RuntimeConfig = RuntimeConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, object]:
        """Dotted keys → values (``{"source.epochs": 5, ...}``), for MLflow params."""
        return _flatten(self.to_dict())

    def source_key(self, code_version: str) -> str:
        """Hash of everything that determines the source run (not ``target.*``, not ``data.label_budget``), plus
        the code.

        Two recipes with the same key train the same source model, so ``main`` reuses it.
        ``runtime`` (the device) is left out: it says where the model is computed, not what it is
        (``auto`` even resolves differently per machine), so a source trained on a GPU is reused by a
        CPU run of the same recipe, and keys of recipes older than the section stay as they were.
        """
        relevant = {k: v for k, v in self.to_dict().items() if k not in ("target", "description", "runtime")}
        for key in ("method", "slice_ratio"):  # target settings (issue 13): keys stay what they were before them
            relevant["source"].pop(key, None)
        relevant["data"]["label_budget"] = None  # it thins the target's labels only; None keeps older keys
        if self.target.classes is not None:  # the source run is also evaluated on the target's classes
            relevant["target_classes"] = list(self.target.classes)
        blob = json.dumps([relevant, code_version], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolve_root(self, domain: DomainConfig) -> str | None:
        """The domain's folder, with a relative ``root`` taken under ``data.root``."""
        if domain.root is None:
            return self.data.root and str(Path(self.data.root).expanduser())
        path = Path(domain.root).expanduser()
        if not path.is_absolute() and self.data.root:
            path = Path(self.data.root).expanduser() / path
        return str(path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _build(cls, raw, path: str):
    if not isinstance(raw, dict):
        raise RecipeError(f"`{path or 'recipe'}` must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"`{path}`" if path else "the recipe"
        names = ", ".join(f"`{path}.{k}`" if path else f"`{k}`" for k in unknown)
        raise RecipeError(f"unknown key(s) {names} in {where}; allowed keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"missing required key `{key}`")
            continue
        values[name] = _value(hints[name], raw[name], key, f.metadata)
    return cls(**values)


def _value(hint, value, key: str, meta):
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise RecipeError(f"`{key}` must not be empty")
    if dataclasses.is_dataclass(base):
        return _build(base, value, key)
    if typing.get_origin(base) is tuple:  # a list of names (`target.classes`): each a non-empty string
        return _names(value, key)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if base is str and meta.get("numbers_as_text") and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # `mean: 0.5` in YAML is a number; the key takes "0.5" or "0.5,0.4,0.3"
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise RecipeError(f"`{key}` must be of type {base.__name__}, got {value!r}")
    if base is float and not math.isfinite(value):  # nan passes every < and > check
        raise RecipeError(f"Expected `{key}` to be a finite number; got {value!r}. Give a plain number, "
                          f"e.g. --set {key}={field_default(key)}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise RecipeError(f"`{key}` must be one of {[c for c in choices if c is not None]}, got {value!r}")
    if meta.get("open") and not meta["min"] < value < meta["max"]:  # both ends excluded
        raise RecipeError(f"Expected `{key}` strictly between {meta['min']} and {meta['max']}; got {value!r}. "
                          f"Give e.g. --set {key}={field_default(key)}")
    if "min" in meta and value < meta["min"]:
        raise RecipeError(f"`{key}` must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise RecipeError(f"`{key}` must be <= {meta['max']}, got {value!r}")
    return value


def _names(value, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip() for v in value):
        raise RecipeError(f"Expected `{key}` to be a non-empty list of class names, e.g. [\"0\", \"1\"]; got "
                          f"{value!r}. Leave it out to keep every class of the domain.")
    names = [str(v) for v in value]  # YAML reads [0, 1] as numbers: digit classes are named "0", "1"
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RecipeError(f"Expected `{key}` to name each class once; got {repeated} more than once. "
                          "Remove the repeats.")
    return tuple(names)


def parse_recipe(raw: dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Validate a recipe mapping, after applying ``overrides`` (``"source.epochs=2"`` strings)."""
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like key.path=value, e.g. source.epochs=2")
        dotted, text = item.split("=", 1)
        node = raw
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: `{part}` is not a section")
        node[parts[-1]] = _safe_yaml(text, f"override {dotted.strip()!r}") if text.strip() else None
    recipe = _build(Recipe, raw, "")
    _check_domains(recipe)
    return recipe


def _check_domains(recipe: Recipe) -> None:
    from .data import DOMAINS
    from .models import MODELS

    for side in ("source", "target"):
        dom = getattr(recipe.data, side)
        if dom.name not in DOMAINS:
            raise RecipeError(f"`data.{side}.name` must be one of {sorted(DOMAINS)}, got {dom.name!r}")
        given = {k for k in ("root", "subset", "split", "size") if getattr(dom, k) is not None}
        allowed = DOMAINS[dom.name].options
        extra = sorted(given - allowed)
        if extra:
            raise RecipeError(f"`data.{side}` ({dom.name}) does not take {extra}; it takes {sorted(allowed) or 'no options'}")
    if recipe.model.name not in MODELS:
        raise RecipeError(f"`model.name` must be one of {sorted(MODELS)}, got {recipe.model.name!r}")
    need = MODELS[recipe.model.name].min_image_size
    if recipe.data.image_size < need:
        raise RecipeError(f"`data.image_size` {recipe.data.image_size} is too small for {recipe.model.name} "
                          f"(needs >= {need})")
    if recipe.source.new_head:
        raise RecipeError("`source.new_head` must be false: the source model is built with its own head; "
                          "a fresh head for other classes is `target.new_head: true`")
    src, tgt = recipe.source.classes, recipe.target.classes
    if src is not None and tgt is not None and set(src) != set(tgt) and not recipe.target.new_head:
        raise RecipeError(f"`target.classes` {list(tgt)} differ from `source.classes` {list(src)}: the target model needs "
                          "a head for its own classes. Set `target.new_head: true` (the source's last layer is "
                          "replaced by a fresh one), or give both the same classes.")
    if recipe.source.freeze_depth:
        raise RecipeError("`source.freeze_depth` must be 0: the source model trains from scratch; "
                          "freezing applies to `target.freeze_depth`")
    recipe.model.normalisation()  # checks model.mean / model.std
    for key, default in (("method", "finetune"), ("slice_ratio", 0.05)):  # issue 13: target settings only
        if getattr(recipe.source, key) != default:
            raise RecipeError(f"Expected `source.{key}` to be unset; got {getattr(recipe.source, key)!r}. The "
                              f"transfer method is a setting of the target run: set `target.{key}` instead.")
    if recipe.target.model_uri is not None:
        raise RecipeError("Expected `target.model_uri` to be unset; got a value. The target starts from the "
                          "source: set `source.model_uri` to fine-tune a logged model.")


def _floats(text: str, key: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise RecipeError(f"Expected `{key}` as one number or three comma-separated numbers (per RGB channel, "
                          f"e.g. 0.485,0.456,0.406); got {text!r}.")
    if key.endswith("std") and min(values) <= 0:
        raise RecipeError(f"Expected `{key}` as positive numbers (a standard deviation); got {text!r}.")
    return values


METHODS = ("finetune", "slice", "scratch")  # `target.method` (issue 13)


def parse_methods(text: str) -> tuple[str, ...]:
    """``"finetune,slice,scratch"`` (``main --methods``) → the methods in that order, each once."""
    names = tuple(part.strip().lower() for part in str(text).split(",") if part.strip())
    bad = [n for n in names if n not in METHODS]
    if not names or bad or len(set(names)) != len(names):
        got = f"unknown {bad}" if bad else ("nothing" if not names else f"a repeat in {list(names)}")
        raise RecipeError(f"Expected --methods as comma-separated transfer methods, each once, from {list(METHODS)} "
                          f"(e.g. finetune,slice,scratch); got {got}. Fix the list, or leave --methods out to use "
                          "the recipe's target.method.")
    return names


def field_default(key: str):
    """The default of a dotted recipe key (``"source.lr"`` → 0.001), or None, for messages."""
    cls, value = Recipe, None
    for part in key.split("."):
        found = {f.name: f for f in dataclasses.fields(cls)}.get(part) if dataclasses.is_dataclass(cls) else None
        if found is None:
            return None
        value = found.default if found.default is not dataclasses.MISSING else None
        cls = typing.get_type_hints(cls).get(part)
        cls = next((a for a in typing.get_args(cls) if a is not type(None)), cls)
    return value


MAX_RECIPE_BYTES = 1 << 20  # recipes are a few hundred bytes; this only stops a wrong or hostile file
MAX_YAML_NODES = 10_000     # nodes after aliases are expanded: a "billion laughs" file stops here
MAX_YAML_DEPTH = 32         # nesting, also through aliases: a deep file would exhaust the stack later


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem}{where}"


def _safe_yaml(text: str, what: str):
    """``yaml.safe_load(text)`` after walking its events (iteratively: no recursion on deep input) to
    bound the size and depth of what it would build, aliases counted as the copies they stand for."""
    sizes: dict[str, int] = {}
    heights: dict[str, int] = {}
    stack: list[list] = []  # per open collection: [anchor, node count at its start, tallest child]
    total = 0

    def close(anchor, size, height):
        if stack:
            stack[-1][2] = max(stack[-1][2], height)
        if anchor:
            sizes[anchor], heights[anchor] = size, height
        if total > MAX_YAML_NODES or len(stack) + height > MAX_YAML_DEPTH:
            raise RecipeError(f"Expected {what} to be a small YAML document (at most {MAX_YAML_NODES} values "
                              f"and {MAX_YAML_DEPTH} levels, aliases expanded); got more. Write the recipe "
                              "out plainly, as in recipes/digits.yaml.")

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                total += 1
                stack.append([event.anchor, total, 0])
                close(None, 0, 0)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, start, tallest = stack.pop()
                close(anchor, total - start + 1, tallest + 1)
            elif isinstance(event, yaml.ScalarEvent):
                total += 1
                close(event.anchor, 1, 1)
            elif isinstance(event, yaml.AliasEvent):
                total += sizes.get(event.anchor, 1)
                close(None, 0, heights.get(event.anchor, 1))
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"Expected {what} to be valid YAML; got {_yaml_error(exc)}. Fix the file "
                          "(recipes/digits.yaml is an annotated example).") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read and validate the YAML recipe at ``path``; see :func:`parse_recipe` for ``overrides``."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; the built-in ones are in recipes/ "
                          "(e.g. recipes/digits.yaml)")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"Expected recipe {path} to be a small YAML file (at most {MAX_RECIPE_BYTES} bytes); "
                          f"got {size} bytes. Pass the recipe file, not a data file.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"Expected recipe {path} to be UTF-8 text; got byte {data[exc.start]:#04x} at offset "
                          f"{exc.start}, so it is binary or in another encoding. Pass a YAML recipe "
                          "(e.g. recipes/digits.yaml).") from None
    if "\x00" in text:
        raise RecipeError(f"Expected recipe {path} to be text; got a NUL byte at offset {text.index(chr(0))}, so "
                          "it is a binary file. Pass a YAML recipe (e.g. recipes/digits.yaml).")
    raw = _safe_yaml(text, f"recipe {path}")
    if raw is not None and not isinstance(raw, dict):
        raise RecipeError(f"Expected recipe {path} to hold a YAML mapping of keys to values; got a "
                          f"{type(raw).__name__}. Start from recipes/digits.yaml.")
    return parse_recipe(raw or {}, overrides)


# --- issue 15: sweeps — a grid of recipe values, each combination one setting ---

SOURCE_RECIPE = "source_recipe"  # the grid key whose values are whole recipe files (several sources, one target)
SWEEP_KEYS = ("recipe", "grid")  # the keys of a sweep file
MAX_SETTINGS = 1000              # a grid larger than this is almost surely a typo (or a runaway product)


@dataclass(frozen=True)
class SweepSetting:
    """One combination of the grid: its values (``{key: value}``, keys sorted; the recipe's own parsed values,
    ``source_recipe`` as given) and the whole recipe it stands for."""

    values: dict
    recipe: Recipe

    def key(self) -> str:
        """A stable hash of what this setting trains (`TAGS.sweep_key`): the whole recipe, without where it runs."""
        relevant = {k: v for k, v in self.recipe.to_dict().items() if k not in ("runtime", "description")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _value_text(value) -> str:
    return json.dumps(value)  # JSON is YAML: the override parser reads it back to the same value


def split_outside_brackets(text: str) -> list[str]:
    """``text`` split at the commas outside [...] and {...}: ``target.classes=[5,6],source.epochs=2`` is two
    overrides (a list value keeps its commas)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth <= 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def parse_grid(items: list[str] | tuple[str, ...]) -> dict[str, list]:
    """``["target.lr=0.001,0.01", "target.freeze_depth=0,2"]`` (``--grid``) → ``{key: [values]}`` in the order
    given; values are YAML (commas inside [...] stay in one value). Keys and values are checked later,
    against the recipe, by `sweep_settings`."""
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(f"Expected --grid as key=v1,v2 (e.g. target.lr=0.001,0.01); got {item!r}.")
        key, text = (part.strip() for part in item.split("=", 1))
        values = [_safe_yaml(p, f"--grid {key} value") for p in split_outside_brackets(text) if p.strip()]
        if key in grid:
            raise RecipeError(f"Expected each --grid key once; got {key!r} twice. Give all its values in one "
                              f"--grid {key}=v1,v2.")
        grid[key] = values
    return grid


def load_sweep(path: str | Path) -> dict:
    """Read a sweep file: ``{"recipe": path or None, "grid": {key: [values]}}`` (see recipes/sweeps/digits.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"sweep file {path} does not exist; recipes/sweeps/digits.yaml is an example")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"Expected sweep file {path} to be a small YAML file (at most {MAX_RECIPE_BYTES} bytes); "
                          f"got {path.stat().st_size} bytes. Pass the sweep file, not a data file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"Expected sweep file {path} to be UTF-8 text; it is binary or in another encoding. "
                          "Pass a YAML sweep file (e.g. recipes/sweeps/digits.yaml).") from None
    raw = _safe_yaml(text, f"sweep file {path}")
    if not isinstance(raw, dict) or not isinstance(raw.get("grid"), dict) or not raw["grid"]:
        raise RecipeError(f"Expected sweep file {path} to be a mapping with a non-empty `grid` of recipe keys to "
                          "lists of values; see recipes/sweeps/digits.yaml.")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise RecipeError(f"unknown key(s) {', '.join(f'`{k}`' for k in unknown)} in sweep file {path}; "
                          f"allowed keys: {list(SWEEP_KEYS)}")
    if raw.get("recipe") is not None and not isinstance(raw["recipe"], str):
        raise RecipeError(f"`recipe` in sweep file {path} must be a recipe file path, got {raw['recipe']!r}")
    grid = {str(k): (v if isinstance(v, list) else [v]) for k, v in raw["grid"].items()}
    return {"recipe": raw.get("recipe"), "grid": grid}


def sweep_settings(recipe_path: str | Path, grid: dict[str, list],
                   overrides: list[str] | tuple[str, ...] = ()) -> list[SweepSetting]:
    """The grid's settings: the cartesian product of its values, keys in the grid's order (the last varies
    fastest). Every key and value is checked on its own first, as a recipe override, so a mistake gets the
    recipe's message; ``source_recipe`` values are recipe files that replace ``recipe_path``."""
    if not grid:
        raise RecipeError("Expected a grid of at least one key, e.g. --grid target.lr=0.001,0.01 or a sweep file.")
    for key, values in grid.items():
        if not values:
            raise RecipeError(f"Expected at least one value for grid key `{key}`; got none. Give e.g. {key}=v1,v2.")
        texts = [_value_text(v) for v in values]
        if len(set(texts)) != len(texts):
            raise RecipeError(f"Expected each value of grid key `{key}` once; got {values}. Remove the repeats.")
        for value in values:  # each on its own: the message names the one bad key or value
            if key == SOURCE_RECIPE:
                if not isinstance(value, str):
                    raise RecipeError(f"Expected `{SOURCE_RECIPE}` values to be recipe files; got {value!r}.")
                load_recipe(value, overrides)
            else:
                load_recipe(recipe_path, [*overrides, f"{key}={_value_text(value)}"])
    total = math.prod(len(v) for v in grid.values())
    if total > MAX_SETTINGS:
        raise RecipeError(f"Expected at most {MAX_SETTINGS} settings; the grid makes {total}. Sweep fewer values.")
    settings = []
    for combo in itertools.product(*grid.values()):
        chosen = dict(zip(grid, combo))
        path = chosen.get(SOURCE_RECIPE, recipe_path)
        sets = [f"{k}={_value_text(v)}" for k, v in chosen.items() if k != SOURCE_RECIPE]
        recipe = load_recipe(path, [*overrides, *sets])
        flat = recipe.flat()
        values = {k: (v if k == SOURCE_RECIPE else flat[k]) for k, v in chosen.items()}
        settings.append(SweepSetting({k: values[k] for k in sorted(values)}, recipe))
    return settings


def grid_hash(recipe: Recipe, grid: dict[str, list]) -> str:
    """A stable hash of (base recipe, grid) (`TAGS.sweep_grid`): a re-run of the same sweep finds its parent."""
    relevant = {k: v for k, v in recipe.to_dict().items() if k not in ("runtime", "description")}
    blob = json.dumps([relevant, {k: grid[k] for k in sorted(grid)}], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
