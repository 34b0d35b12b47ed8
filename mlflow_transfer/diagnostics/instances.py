"""Instance view data (§5.2): embeddings, predictions and thumbnails (the 2-D t-SNE projection is
`mlflow_transfer.projection.tsne_projection`, shared with the app)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..validation import check_labels


@dataclass(frozen=True)
class ModelOutputs:
    """What one model says about N instances.

    Attributes:
        embedding: float32 (N, D), the activation right before the fully connected layers.
        prediction: int64 (N,), argmax class.
        confidence: float32 (N,), softmax probability of the predicted class, in [0, 1].
        true_class_probability: float32 (N,), softmax probability of the given label (if labels given).
        probabilities: float32 (N, classes), the whole softmax (LEEP needs every class's share).
    """

    embedding: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    true_class_probability: np.ndarray | None
    probabilities: np.ndarray | None = None


def model_outputs(model: nn.Module, images: torch.Tensor, labels: np.ndarray | None = None, *,
                  batch_size: int = 256) -> ModelOutputs:
    """Run a `TransferNet` (``embedding`` then ``head``) over ``images`` (N, 3, S, S) in eval mode; a
    model with ``embed_and_logits`` (an adapted foreign classifier, `models.adapter`) gives both from one
    pass, since its logits need not be a head applied to its embedding."""
    joint = getattr(model, "embed_and_logits", None)
    if joint is None and not (hasattr(model, "embedding") and hasattr(model, "head")):
        raise DiagnosticsError(f"Expected model as a TransferNet with `embedding` and `head`; got "
                               f"{type(model).__name__}. Build it with mlflow_transfer.models.build_model.")
    if images.ndim != 4:
        raise DiagnosticsError(f"Expected images as (N, C, H, W); got shape {tuple(images.shape)}.")
    was_training = model.training
    model.eval()
    embeddings, probs = [], []
    first = next(model.parameters(), None)
    device = first.device if first is not None else images.device  # batches follow the model
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size].to(device)
                if joint is not None:
                    emb, logits = joint(batch)
                else:
                    emb = model.embedding(batch)
                    logits = model.head(emb)
                embeddings.append(emb.float().cpu().numpy())
                probs.append(torch.softmax(logits, dim=1).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not embeddings:
        raise DiagnosticsError("Expected at least one image; got N = 0.")
    emb, prob = np.concatenate(embeddings), np.concatenate(probs)
    pred = prob.argmax(1).astype(np.int64)
    true_p = None
    if labels is not None:
        labels = check_labels(labels, "labels", prob.shape[1], length=len(images))
        true_p = prob[np.arange(len(labels)), labels].astype(np.float32)
    prob = prob.astype(np.float32, copy=False)
    return ModelOutputs(emb.astype(np.float32), pred, prob.max(1), true_p, prob)


def png_thumbnails(images: torch.Tensor | np.ndarray, size: int = 32) -> list[bytes]:
    """PNG bytes of each image (N, 3, H, W) in [0, 1], resized to ``size`` px (for hover tooltips)."""
    from PIL import Image

    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise DiagnosticsError(f"Expected images as (N, 1|3, H, W); got shape {arr.shape}.")
    out = []
    for img in (np.clip(arr, 0, 1) * 255).round().astype(np.uint8):
        pil = Image.fromarray(img.transpose(1, 2, 0).squeeze(-1) if img.shape[0] == 1 else img.transpose(1, 2, 0))
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True)
        out.append(buf.getvalue())
    return out
