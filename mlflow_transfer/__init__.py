"""mlflow-transfer: what knowledge moved when a model was fine-tuned on a new domain.

Public API re-exports only; see the subpackages for the pieces.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlflow-transfer")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

from .config import Recipe, load_recipe  # noqa: E402
from .errors import TransferError  # noqa: E402

__all__ = ["Recipe", "TransferError", "__version__", "load_recipe"]
