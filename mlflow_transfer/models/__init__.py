"""Models: the registry, where every model is a `TransferNet` with an embedding, a head and analysis layers;
any other PyTorch classifier is wrapped by `models.adapter` (an `AdaptedNet`)."""

from .registry import MODELS, ModelInfo, TransferNet, build_model, freeze_layers, load_state, \
    with_new_head

__all__ = ["MODELS", "ModelInfo", "TransferNet", "build_model", "freeze_layers", "load_state", "with_new_head"]
