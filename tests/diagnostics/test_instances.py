"""Instance-view numerics: embeddings/predictions, t-SNE projection, thumbnails."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers.models import seeded
from PIL import Image
from sklearn.manifold import trustworthiness

from mlflow_transfer.diagnostics.instances import model_outputs, png_thumbnails
from mlflow_transfer.projection import tsne_projection
from mlflow_transfer.errors import DiagnosticsError
from mlflow_transfer.models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")


def test_outputs_match_the_model():
    model = seeded("alexnet-32", 10).eval()
    x = torch.rand(7, 3, 32, 32)
    labels = np.array([0, 1, 2, 3, 4, 5, 6])
    out = model_outputs(model, x, labels, batch_size=3)
    with torch.no_grad():
        logits = model(x)
        emb = model.embedding(x)
    np.testing.assert_allclose(out.embedding, emb.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.prediction, logits.argmax(1).numpy())
    probs = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose(out.confidence, probs.max(1), rtol=1e-5)
    np.testing.assert_allclose(out.true_class_probability, probs[np.arange(7), labels], rtol=1e-5)
    assert out.embedding.shape == (7, model.analysis_layers["fc6"].in_features)


def test_outputs_validate():
    model = build_model("alexnet-32", 10)
    with pytest.raises(DiagnosticsError, match=r"Expected model as a TransferNet with `embedding` and `head`; got Linear\."):
        model_outputs(torch.nn.Linear(2, 2), torch.rand(2, 3, 32, 32))
    with pytest.raises(DiagnosticsError, match=r"Expected images as \(N, C, H, W\); got shape \(3, 32, 32\)\."):
        model_outputs(model, torch.rand(3, 32, 32))
    with pytest.raises(DiagnosticsError, match=r"Expected labels with 2 entries \(one per instance\); got 1\."):
        model_outputs(model, torch.rand(2, 3, 32, 32), np.array([1]))
    with pytest.raises(DiagnosticsError, match=r"Expected labels as class indices in \[0, 10\); got values in \[0, 10\]\."):
        model_outputs(model, torch.rand(2, 3, 32, 32), np.array([0, 10]))


def test_tsne_keeps_clusters_apart_and_is_seeded():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 20))
    x = np.concatenate([c + rng.normal(0, 0.5, (40, 20)) for c in centres])
    a = tsne_projection(x, seed=1, n_jobs=1)
    b = tsne_projection(x, seed=1, n_jobs=1)
    assert a.shape == (120, 2) and a.dtype == np.float32
    np.testing.assert_allclose(a, b)
    # neighbourhoods are preserved (sklearn's trustworthiness is the reference measure)
    assert trustworthiness(x, a, n_neighbors=5) > 0.9
    labels = np.repeat([0, 1, 2], 40)
    centroids = np.stack([a[labels == k].mean(0) for k in range(3)])
    spread = max(np.linalg.norm(a[labels == k] - centroids[k], axis=1).mean() for k in range(3))
    gaps = [np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread


def test_tsne_small_n_and_errors():
    assert tsne_projection(np.random.default_rng(0).normal(size=(10, 3)), n_jobs=1).shape == (10, 2)
    with pytest.raises(DiagnosticsError, match=r"Expected the embedding as a 2-D array of at least 4 instances"):
        tsne_projection(np.zeros((3, 2)))
    with pytest.raises(DiagnosticsError, match=r"Expected the t-SNE gradient as one of \('auto', 'fft', 'bh'\); got 'x'\."):
        tsne_projection(np.zeros((8, 2)), gradient="x")


def test_tsne_gradient_auto_is_barnes_hut_below_a_thousand_points():
    x = np.random.default_rng(0).normal(size=(60, 5))
    auto = tsne_projection(x, seed=2, n_jobs=1)
    np.testing.assert_array_equal(auto, tsne_projection(x, seed=2, n_jobs=1, gradient="bh"))
    assert not np.array_equal(auto, tsne_projection(x, seed=2, n_jobs=1, gradient="fft"))


def test_thumbnails_decode_to_the_images():
    x = torch.rand(3, 3, 16, 16)
    pngs = png_thumbnails(x, size=16)
    for png, img in zip(pngs, x):
        decoded = np.asarray(Image.open(io.BytesIO(png)))
        np.testing.assert_array_equal(decoded, (img.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8))
    assert Image.open(io.BytesIO(png_thumbnails(x, size=8)[0])).size == (8, 8)
    with pytest.raises(DiagnosticsError):
        png_thumbnails(torch.rand(3, 16, 16))
