"""mlflow-transfer: what knowledge moved when a model was fine-tuned on a new domain.

Public API re-exports only; see the subpackages for the pieces. The re-exports are lazy (PEP 562):
``Recipe`` and ``load_recipe`` come from `config`, which imports the data and model layers (torch), so
importing a subpackage (``mlflow_transfer.bundle`` for the app) does not import them.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlflow-transfer")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

_LAZY = {"Recipe": ".config", "load_recipe": ".config", "TransferError": ".errors"}

__all__ = ["Recipe", "TransferError", "__version__", "load_recipe"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
