"""`printed-digits`: an SVHN-like domain rendered offline from matplotlib's TrueType fonts, and its
clean variant `printed-digits-clean` (a second source domain for sweeps over sources).

Each `printed-digits` image is a digit drawn in a random font, size, rotation, position, colour and
blur, over a random crop of one of scikit-learn's sample photos, sometimes with parts of neighbouring
digits at the sides (as in house-number crops). A `printed-digits-clean` image is the same kind of
digit (random font, size, small shift and rotation) in one colour on a plain background of another,
with no photo, no neighbours and no blur: a source closer to the handwritten target's plain
backgrounds. Rendering is deterministic for a given ``seed``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..errors import DataError
from ..validation import check_int
from .domain import DIGIT_CLASSES, Domain, tensor_domain

# Text fonts only: matplotlib also ships symbol fonts (cmsy, cmex, STIXSize...) whose digits are glyphs.
_FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmb10.ttf",
    "cmss10.ttf", "cmtt10.ttf",
)
_SUPERSAMPLE = 2  # render at 2x and downsample: smooth edges at 32 px


def font_paths() -> list[Path]:
    """The matplotlib font files used for rendering (those present in this installation)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in _FONT_FILES if (folder / name).exists()]
    if not paths:
        raise DataError(f"no TrueType fonts found in {folder}; reinstall matplotlib")
    return paths


@lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _luminance(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _render_one(rng: np.random.Generator, digit: int, size: int, fonts: list[Path]) -> np.ndarray:
    canvas = size * _SUPERSAMPLE
    photo = _backgrounds()[rng.integers(len(_backgrounds()))]
    h, w, _ = photo.shape
    crop = int(rng.integers(24, min(h, w) // 2))
    y, x = rng.integers(0, h - crop), rng.integers(0, w - crop)
    background = Image.fromarray(photo[y:y + crop, x:x + crop]).resize((canvas, canvas), Image.BILINEAR)
    bg_lum = _luminance(np.asarray(background, dtype=np.float32).reshape(-1, 3).mean(0))

    # A text colour clearly lighter or darker than the photo, as printed numbers are.
    for _ in range(20):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if abs(_luminance(colour) - bg_lum) > 70:
            break
    else:
        colour = (255, 255, 255) if bg_lum < 128 else (0, 0, 0)

    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    font_path = str(fonts[rng.integers(len(fonts))])
    font = _font(font_path, int(canvas * rng.uniform(0.6, 0.9)))
    centre = canvas / 2 + rng.uniform(-0.1, 0.1, 2) * canvas
    draw.text(tuple(centre), str(digit), fill=255, font=font, anchor="mm")
    if rng.random() < 0.3:  # neighbouring house-number digits, cut by the crop
        for side in (-1, 1):
            if rng.random() < 0.6:
                other = str(int(rng.integers(10)))
                offset = side * canvas * rng.uniform(0.65, 0.8)
                draw.text((centre[0] + offset, centre[1]), other, fill=255, font=font, anchor="mm")
    mask = mask.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    image = Image.composite(Image.new("RGB", (canvas, canvas), colour), background, mask)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.0)) * _SUPERSAMPLE))
    return np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def _render_clean(rng: np.random.Generator, digit: int, size: int, fonts: list[Path]) -> np.ndarray:
    canvas = size * _SUPERSAMPLE
    # Two colours far apart in luminance, either way round (light on dark or dark on light).
    for _ in range(20):
        background, colour = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
        if abs(_luminance(colour) - _luminance(background)) > 100:
            break
    else:
        background, colour = (0, 0, 0), (255, 255, 255)
    mask = Image.new("L", (canvas, canvas), 0)
    font = _font(str(fonts[rng.integers(len(fonts))]), int(canvas * rng.uniform(0.6, 0.85)))
    centre = canvas / 2 + rng.uniform(-0.05, 0.05, 2) * canvas
    ImageDraw.Draw(mask).text(tuple(centre), str(digit), fill=255, font=font, anchor="mm")
    mask = mask.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR)
    image = Image.composite(Image.new("RGB", (canvas, canvas), colour),
                            Image.new("RGB", (canvas, canvas), background), mask)
    return np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def render_printed_digits(n: int, *, image_size: int = 32, seed: int = 0,
                          clean: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` printed digits, balanced over the ten classes (``clean``: the plain-background
    variant, see the module docstring).

    Returns:
        images: uint8 array of shape ``(n, image_size, image_size, 3)``.
        labels: int64 array of shape ``(n,)`` with values 0–9.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    fonts = font_paths()
    render = _render_clean if clean else _render_one
    images = np.stack([render(rng, int(d), image_size, fonts) for d in labels]) if n else \
        np.zeros((0, image_size, image_size, 3), np.uint8)
    return images, labels


def load_printed_digits(*, image_size: int = 32, size: int = 3000, seed: int = 0, clean: bool = False) -> Domain:
    """The ``printed-digits`` domain, or ``printed-digits-clean`` with ``clean``: ``size`` rendered
    images (see module docstring)."""
    name = "printed-digits-clean" if clean else "printed-digits"
    check_int(size, f"the {name} size", low=10, doc="(at least one image per class)", error=DataError)
    images, labels = render_printed_digits(size, image_size=image_size, seed=seed, clean=clean)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return tensor_domain(name, DIGIT_CLASSES, tensor, labels)
