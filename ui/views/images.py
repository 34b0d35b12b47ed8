"""Small images for the views: PNG bytes of patch arrays and ``data:`` URIs for HTML and hover."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

__all__ = ["data_uri", "png_bytes"]


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a uint8 image (H, W) or (H, W, 3)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,…`` for PNG bytes: shown inline, no request to any server."""
    return "data:image/png;base64," + base64.b64encode(png).decode()
