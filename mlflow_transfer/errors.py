"""User-facing errors.

Every mistake a user can make (bad recipe, missing data, wrong run id, corrupt file) raises a
subclass of :class:`TransferError` whose message says what was expected, what arrived and how to fix
it. The CLI prints that message on one line and exits non-zero without a traceback.
"""


class TransferError(ValueError):
    """Base class of every user error raised by mlflow-transfer."""


class RecipeError(TransferError):
    """A recipe file or override is invalid (unknown key, bad value)."""


class DataError(TransferError):
    """A dataset is missing, malformed, or the two domains do not match."""


class ModelError(TransferError):
    """An unknown model name, a weights file that does not fit, or a corrupt checkpoint."""


class RunLookupError(TransferError):
    """A run id that does not exist, has the wrong role, or lacks a logged model."""


class DiagnosticsError(TransferError):
    """Inputs to a diagnostic that do not fit (shapes, layer names, class sets, architectures)."""


class NoTimelineError(DiagnosticsError):
    """A pair whose training has no timeline to draw (no per-epoch checkpoints, one epoch, a head the
    projection cannot use): `main` goes on without it, `timetravel` says why."""


class BundleError(TransferError):
    """A diagnostics bundle that is missing, incomplete, corrupt, or of an unknown schema version."""


class CacheError(TransferError):
    """The local bundle cache holds something mlflow-transfer did not write there, or cannot be written."""


class TrackingUnavailableError(TransferError):
    """The tracking server cannot be reached (wrong URI, server down)."""


class ClusterError(TransferError):
    """The Ray cluster a sweep was told to join cannot be reached (wrong address, cluster down)."""
