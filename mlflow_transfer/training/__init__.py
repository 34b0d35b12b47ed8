"""Pure training and evaluation loops (no MLflow): callers receive per-epoch results by callback; `slicing`
holds ReMoS slicing (issue 13), imported from there."""

from .loops import EpochResult, evaluate, fit

__all__ = ["EpochResult", "evaluate", "fit"]
