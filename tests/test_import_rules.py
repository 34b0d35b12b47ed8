"""The one-way data flow of DESIGN.md, checked on the source: who may import MLflow and Panel."""

from __future__ import annotations

import ast
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
