"""Model registry: every model is a `TransferNet` with an embedding, a head and analysis layers."""

from .registry import MODELS, ModelInfo, TransferNet, build_model, freeze_layers, load_state

__all__ = ["MODELS", "ModelInfo", "TransferNet", "build_model", "freeze_layers", "load_state"]
