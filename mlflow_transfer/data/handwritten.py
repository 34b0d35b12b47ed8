"""`handwritten-digits`: scikit-learn's 1,797 real handwritten digits as an MNIST-like domain."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .domain import DIGIT_CLASSES, Domain, tensor_domain


def load_handwritten_digits(*, image_size: int = 32) -> Domain:
    """scikit-learn's ``load_digits`` (8×8, 16 grey levels) resized to ``image_size`` with 3 channels.

    Items are white digits on black, float32 ``(3, image_size, image_size)`` in [0, 1].
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    # sklearn crops digits to their box; a 1-pixel margin gives MNIST's dark border around the stroke.
    images = F.pad(images, (1, 1, 1, 1))
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
    return tensor_domain("handwritten-digits", DIGIT_CLASSES, images, digits.target)
