"""The one-way data flow of docs/ARCHITECTURE.md, checked on the source: who may import MLflow and Panel, no
import cycles, no private names across modules, the app's only door (the bundle reader, also checked in a
fresh interpreter), and long modules saying why."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlflow_transfer"
# Only these may import mlflow: the tracking layer (the only writer), its run-context plugin, and the
# CLI (which only points MLflow at a tracking URI).
MLFLOW_ALLOWED = ("tracking/", "plugin.py", "cli.py")
PURE = ("data/", "models/", "training/", "diagnostics/", "config.py", "errors.py", "tags.py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules():
    return [(p.relative_to(PACKAGE).as_posix(), _imports(p)) for p in sorted(PACKAGE.rglob("*.py"))]


def test_the_walk_sees_the_package():
    found = dict(_modules())
    assert "mlflow" in found["tracking/runs.py"] and "torch" in found["training/loops.py"]


def test_only_the_tracking_layer_imports_mlflow():
    offenders = [name for name, imports in _modules()
                 if "mlflow" in imports and not name.startswith(MLFLOW_ALLOWED)]
    assert offenders == []


def test_pure_layers_import_neither_mlflow_nor_panel():
    offenders = [(name, sorted(imports & {"mlflow", "panel", "holoviews", "bokeh"}))
                 for name, imports in _modules() if name.startswith(PURE)]
    assert [o for o in offenders if o[1]] == []


def test_no_pickle_anywhere():
    offenders = [name for name, imports in _modules() if imports & {"pickle", "cloudpickle", "dill", "joblib"}]
    assert offenders == []


# --- issue 10: the house — a module graph without cycles, no private names across modules, the app's
# only door is the bundle (checked on the source and in a fresh interpreter), long modules say why ---

REPO = PACKAGE.parent
OWN = ("mlflow_transfer", "ui")
# what the app may import from the package: the bundle reader and what it stands on, the shared
# projection; MLflow only through ui/readers.py -> mlflow_transfer.tracking.bundles (and, issue 16, the
# compare listing's reader mlflow_transfer.tracking.compare)
READER_DOORS = ("mlflow_transfer.tracking.bundles", "mlflow_transfer.tracking.compare")
UI_MAY_IMPORT = ("mlflow_transfer", "mlflow_transfer.bundle", "mlflow_transfer.errors",
                 "mlflow_transfer.validation", "mlflow_transfer.projection", "mlflow_transfer.neighbours",
                 "mlflow_transfer.regions")
UI_NEVER = ("mlflow_transfer.diagnostics", "mlflow_transfer.training", "mlflow_transfer.models",
            "mlflow_transfer.data")
LONG = 400


def _own_files() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package and of ``ui/``."""
    found = {}
    for top in OWN:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if _is_package(path) else module.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import of ``module``, module-level or
    inside a function. ``from pkg import name`` is an import of ``pkg.name`` when that is a module of
    ours, else of ``pkg`` (a name defined there). A package ``__init__`` that re-exports lazily
    (a ``_LAZY = {name: ".module"}`` table, PEP 562) imports those modules too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full, None, node.lineno) if full in known else (base, alias.name, node.lineno))
        elif (isinstance(node, ast.Assign) and _is_package(path) and isinstance(node.value, ast.Dict)
              and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)):
            for key, value in zip(node.value.keys, node.value.values):
                fake = ast.ImportFrom(module=value.value.lstrip(".") or None,
                                      level=len(value.value) - len(value.value.lstrip(".")), names=[])
                out.append((_base(module, path, fake), key.value, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    known = _own_files()
    return {m: {target for target, _, _ in _imports_of(m, p, known) if target in known}
            for m, p in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v); on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop(); on_stack.discard(w); component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_and_lazy_imports():
    graph = _graph()
    assert "ui.report" in graph["mlflow_transfer.cli"]  # inside a function
    assert "mlflow_transfer.tracking.pipeline" in graph["mlflow_transfer.tracking"]  # the lazy table
    assert "mlflow_transfer.tracking.context" in graph["mlflow_transfer.tracking.runs"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}) == [["a", "b", "c"], ["d"]]


def test_no_import_cycles_among_our_modules():
    assert _cycles(_graph()) == []


def test_no_private_name_is_imported_across_modules():
    known = _own_files()
    offenders = []
    for module, path in known.items():
        for target, name, line in _imports_of(module, path, known):
            if not target.startswith(OWN):
                continue
            private_name = name is not None and name.startswith("_") and not name.startswith("__")
            # a private module (``_hooks``) belongs to its package: only its siblings may import it
            parts = target.split(".")
            private_module = next((".".join(parts[:i]) for i, part in enumerate(parts)
                                   if part.startswith("_") and not part.startswith("__")), None)
            sibling = private_module is not None and (module + ".").startswith(private_module + ".")
            if private_name or (private_module is not None and not sibling):
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {target}{'.' + name if name else ''}")
    assert offenders == []


def test_the_app_reads_only_bundles_and_reaches_mlflow_only_through_its_readers():
    known = _own_files()
    offenders = []
    for module, path in known.items():
        if not module.startswith("ui"):
            continue
        for target, _, line in _imports_of(module, path, known):
            where = f"{path.relative_to(REPO)}:{line} imports {target}"
            if target.split(".")[0] == "mlflow" or target.startswith(UI_NEVER):
                offenders.append(where)
            elif target.startswith("mlflow_transfer.tracking"):
                if not (module == "ui.readers" and target in READER_DOORS):
                    offenders.append(where)
            elif target.startswith("mlflow_transfer") and not any(
                    target == allowed or target.startswith(allowed + ".") and allowed != "mlflow_transfer"
                    for allowed in UI_MAY_IMPORT):
                offenders.append(where)
    assert offenders == []
    assert "mlflow_transfer.tracking.bundles" in _graph()["ui.readers"]  # the rule sees the one door


# the app's own layers, bottom up: what reads bundles and the server, the views (drawn from a bundle,
# knowing no state), the state, the tabs (Viewers over the state), the app that assembles them
UI_LAYERS = (("ui.readers", "ui.projection"), ("ui.views",), ("ui.state",), ("ui.tabs", "ui.pair_browser"),
             ("ui.app",))


def _ui_layer(module: str) -> int | None:
    return next((i for i, names in enumerate(UI_LAYERS) if module == names or module.startswith(names)), None)


def test_no_app_module_imports_a_layer_above_its_own():
    graph = _graph()
    offenders = [f"{module} imports {target}" for module, targets in graph.items() for target in targets
                 if _ui_layer(module) is not None and _ui_layer(target) is not None
                 and _ui_layer(target) > _ui_layer(module)]
    assert offenders == []
    # the rule sees each layer's imports
    assert {"ui.tabs.network", "ui.pair_browser"} <= graph["ui.app"] and "ui.state" in graph["ui.tabs.base"]
    assert "ui.views.network" in graph["ui.tabs.network"] and "ui.readers" in graph["ui.views.pairs"]


def _loaded_after(statement: str) -> set[str]:
    """Top-level and ``mlflow_transfer.*`` modules in ``sys.modules`` after ``statement`` in a fresh
    interpreter (run from the repository root, so ``ui`` imports as the server imports it)."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


HEAVY = ("torch", "captum", "sklearn", "scipy")


def _hits(loaded: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if m in roots or m.startswith(tuple(r + "." for r in roots)))


def test_importing_the_bundle_reader_imports_no_torch_captum_sklearn_or_scipy():
    loaded = _loaded_after("import mlflow_transfer.bundle")
    assert "mlflow_transfer.bundle.records" in loaded
    assert _hits(loaded, HEAVY + ("mlflow_transfer.diagnostics", "mlflow_transfer.config")) == []


def test_the_app_imports_no_diagnostics_torch_or_captum():
    # scipy is not asserted here: datashader (the instance view's rasteriser) imports it itself, and so
    # does mlflow; the rule is about our diagnostics and the attribution stack
    loaded = _loaded_after("import ui.app\nimport ui.server")
    assert "ui.app" in loaded and "mlflow_transfer.bundle.records" in loaded
    assert _hits(loaded, ("torch", "captum", "sklearn", "mlflow_transfer.diagnostics", "mlflow_transfer.training",
                          "mlflow_transfer.models", "mlflow_transfer.data", "mlflow_transfer.config")) == []


def test_long_modules_say_why_at_the_top():
    too_long = []
    for module, path in _own_files().items():
        lines = path.read_text().splitlines()
        if len(lines) <= LONG:
            continue
        doc = ast.get_docstring(ast.parse("\n".join(lines))) or ""
        if not any("long because" in line for line in doc.splitlines()):
            too_long.append(f"{path.relative_to(REPO)} ({len(lines)} lines)")
    assert too_long == []
