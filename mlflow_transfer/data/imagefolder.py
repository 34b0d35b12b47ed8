"""Users' own images in one folder per class (Office-31 layout), read with torchvision's ImageFolder."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image
from torchvision import datasets

from ..errors import DataError
from ..validation import check_int
from .domain import Domain, TransformedDataset
from .external import rgb_transform


def load_imagefolder(*, root: str, image_size: int, subset: str | None = None) -> Domain:
    """A domain of class-labelled images from ``<root>/<subset>`` (or ``<root>``).

    The domain folder holds either ``images/<class>/*`` (as Office-31 ships) or ``<class>/*``;
    images may sit in nested folders below their class folder. Classes are sorted by name.

    Args:
        root: dataset folder (e.g. ``.../office31``) or the domain folder itself.
        image_size: side in pixels of the returned square images.
        subset: domain folder inside ``root`` (e.g. ``"amazon"``), or None to use ``root``.

    Returns:
        A `Domain` named ``subset`` (or the basename of ``root``) whose items are float32
        ``(3, image_size, image_size)`` tensors in [0, 1] and whose labels index ``classes``.
    """
    check_int(image_size, "the imagefolder image_size", low=1, error=DataError)
    domain_dir = _domain_dir(root, subset)
    class_dir = _class_dir(domain_dir)
    base = _ImageFolder(class_dir, loader=_load_rgb, allow_empty=True)
    targets = np.asarray(base.targets, dtype=np.int64)
    empty = [c for c, n in zip(base.classes, np.bincount(targets, minlength=len(base.classes))) if n == 0]
    if empty:
        raise DataError(f"imagefolder: class folder(s) with no images in {class_dir}: {', '.join(empty)} "
                        f"(image extensions read: {', '.join(datasets.folder.IMG_EXTENSIONS)}); "
                        "add images or remove the folder")
    name = subset if subset is not None else os.path.basename(os.path.normpath(root))
    return Domain(name=name, classes=tuple(base.classes),
                  dataset=TransformedDataset(base, rgb_transform(image_size)), targets=targets)


def _domain_dir(root: str, subset: str | None) -> str:
    if not os.path.isdir(root):
        raise DataError(f"imagefolder: root folder {root} does not exist; set `root` to the folder "
                        "that holds the domain folders (e.g. office31/ with amazon/, dslr/, webcam/)")
    if subset is None:
        return root
    path = os.path.join(root, subset)
    if not os.path.isdir(path):
        found = _subfolders(root)
        raise DataError(f"imagefolder: subset folder {path} does not exist; subsets found in {root}: "
                        f"{', '.join(found) if found else 'none'}")
    return path


def _class_dir(domain_dir: str) -> str:
    """The folder whose subfolders are the classes: ``<domain>/images`` if present, else ``<domain>``."""
    images = os.path.join(domain_dir, "images")
    class_dir = images if os.path.isdir(images) else domain_dir
    if not _subfolders(class_dir):
        raise DataError(f"imagefolder: no class folders in {class_dir}; expected "
                        f"{domain_dir}/images/<class>/* or {domain_dir}/<class>/*")
    return class_dir


def _subfolders(path: str) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .git) are never classes or subsets.
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


class _ImageFolder(datasets.ImageFolder):
    def find_classes(self, directory):
        classes = _subfolders(directory)
        return classes, {c: i for i, c in enumerate(classes)}


def _open_checked(path: str) -> Image.Image:
    """``Image.open(path)`` (lazy: reads the header), refusing a file that is no image or whose
    declared size exceeds ``Image.MAX_IMAGE_PIXELS`` (a small file can declare billions of pixels and
    take all memory when decoded; PIL only warns up to twice the limit)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DataError(f"imagefolder: Expected images of at most {Image.MAX_IMAGE_PIXELS} pixels; got {path} "
                        f"({exc}). Replace or delete the file: it could be a decompression bomb.") from None
    except OSError as exc:
        raise DataError(f"imagefolder: cannot read image {path} ({str(exc).splitlines()[0][:160]}); "
                        "replace or delete the file") from None


def _load_rgb(path: str) -> Image.Image:
    # Images are opened lazily during training; say which file is broken instead of a bare PIL error.
    image = _open_checked(path)
    try:
        with image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's decoders raise these for damaged data
        raise DataError(f"imagefolder: cannot read image {path} ({str(exc).splitlines()[0][:160]}); "
                        "replace or delete the file") from None
