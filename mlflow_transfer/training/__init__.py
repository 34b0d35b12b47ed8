"""Pure training and evaluation loops (no MLflow): callers receive per-epoch results by callback."""

from .loops import EpochResult, evaluate, fit

__all__ = ["EpochResult", "evaluate", "fit"]
