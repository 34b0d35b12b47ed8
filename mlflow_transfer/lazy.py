"""Lazy re-exports (PEP 562) for a package's ``__init__``: its public names are imported on first use,
so importing one subpackage (the app imports ``tracking.bundles``) does not import them all (torch)."""

from __future__ import annotations

import sys
from importlib import import_module


def lazy_exports(package: str, table: dict[str, str], names: list[str]):
    """``(__getattr__, __dir__)`` for ``package``, whose name ``n`` in ``table`` comes from the module
    ``table[n]`` (relative to the package)."""

    def __getattr__(name: str):
        if name in table:
            value = getattr(import_module(table[name], package), name)
            setattr(sys.modules[package], name, value)  # once: later lookups do not come here
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
