"""mlflow-transfer: what knowledge moved when a model was fine-tuned on a new domain.

Public API re-exports only; see the subpackages for the pieces. The re-exports are lazy (PEP 562):
``Recipe`` and ``load_recipe`` come from `config`, which imports the data and model layers (torch), so
importing a subpackage (``mlflow_transfer.bundle`` for the app) does not import them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlflow-transfer")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

from .lazy import lazy_exports  # noqa: E402

_LAZY = {"Recipe": ".config", "load_recipe": ".config", "TransferError": ".errors"}

__all__ = ["Recipe", "TransferError", "__version__", "load_recipe"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
