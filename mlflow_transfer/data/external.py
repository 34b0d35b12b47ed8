"""MNIST, SVHN and USPS read from a local folder in torchvision's file layout (never downloaded).

Each loader checks the exact files torchvision will open before opening them, so a missing or
misplaced file gives one `DataError` that names every missing file, the folder and the fix.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from torchvision import datasets, transforms
from torchvision.datasets.mnist import read_image_file, read_label_file

from ..errors import DataError
from ..validation import check_choice, check_int
from .domain import DIGIT_CLASSES, Domain, TransformedDataset

SPLITS = ("train", "test")

# The uncompressed names torchvision's MNIST reads from <root>/MNIST/raw.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
USPS_FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}


def rgb_transform(image_size: int) -> transforms.Compose:
    """PIL image (any mode, any size) -> float32 tensor ``(3, image_size, image_size)`` in [0, 1]."""
    return transforms.Compose([
        _to_rgb,
        transforms.Resize((image_size, image_size), antialias=True),
        transforms.ToTensor(),
    ])


def _to_rgb(image: Image.Image) -> Image.Image:
    # A module-level function rather than a lambda so DataLoader workers can receive the transform.
    return image if image.mode == "RGB" else image.convert("RGB")


def load_mnist(*, root: str, image_size: int, split: str = "train") -> Domain:
    """MNIST from ``<root>/MNIST/raw`` (uncompressed idx files, as torchvision lays them out).

    Args:
        root: folder that contains ``MNIST/raw``.
        image_size: side in pixels of the returned square images.
        split: ``"train"`` (60,000 images in the real set) or ``"test"`` (10,000).

    Returns:
        A `Domain` named ``"mnist"`` (``"mnist:test"``) whose items are float32 ``(3, S, S)``
        tensors in [0, 1] and labels 0..9.
    """
    _check_args("mnist", split, image_size)
    raw = os.path.join(root, "MNIST", "raw")
    _require_files("mnist", raw, MNIST_FILES[split], _mnist_fix(root, raw, MNIST_FILES[split]))
    base = _RawMNIST(root, train=split == "train", download=False)
    return _domain("mnist", split, base, base.targets.numpy(), image_size)


def load_svhn(*, root: str, image_size: int, split: str = "train") -> Domain:
    """SVHN (cropped digits) from ``<root>/train_32x32.mat`` or ``<root>/test_32x32.mat``.

    SVHN stores digit 0 as label 10; torchvision maps it back to 0, so labels are 0..9.

    Args:
        root: folder that contains the ``.mat`` files.
        image_size: side in pixels of the returned square images (the files hold 32×32).
        split: ``"train"`` or ``"test"``.

    Returns:
        A `Domain` named ``"svhn"`` (``"svhn:test"``), items float32 ``(3, S, S)`` in [0, 1].
    """
    _check_args("svhn", split, image_size)
    name = SVHN_FILES[split]
    _require_files("svhn", root, (name,),
                   f"put the SVHN 'cropped digits' file {name} (format 2, .mat) in that folder")
    base = _read("svhn", root, name, lambda: _LocalSVHN(root, split=split, download=False))
    return _domain("svhn", split, base, base.labels, image_size)


def load_usps(*, root: str, image_size: int, split: str = "train") -> Domain:
    """USPS from ``<root>/usps.bz2`` or ``<root>/usps.t.bz2`` (libsvm format, bzip2-compressed).

    Args:
        root: folder that contains the ``.bz2`` files (keep them compressed: torchvision reads
            them with ``bz2.open``).
        image_size: side in pixels of the returned square images (the files hold 16×16).
        split: ``"train"`` or ``"test"``.

    Returns:
        A `Domain` named ``"usps"`` (``"usps:test"``), items float32 ``(3, S, S)`` in [0, 1].
    """
    _check_args("usps", split, image_size)
    name = USPS_FILES[split]
    _require_files("usps", root, (name,),
                   f"put the libsvm USPS file {name} in that folder, still bzip2-compressed")
    base = _read("usps", root, name,
                 lambda: datasets.USPS(root, train=split == "train", download=False))
    return _domain("usps", split, base, base.targets, image_size)


class _RawMNIST(datasets.MNIST):
    # torchvision's MNIST also prefers a legacy `processed/*.pt` cache (read with torch.load) and
    # demands both splits' files even to load one; read only the raw files this split needs, and
    # name the one that fails to parse.
    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, "MNIST", "raw")

    def _check_legacy_exist(self) -> bool:
        return False

    def _check_exists(self) -> bool:
        split = "train" if self.train else "test"
        return all(os.path.isfile(os.path.join(self.raw_folder, f)) for f in MNIST_FILES[split])

    def _load_data(self):
        images, labels = MNIST_FILES["train" if self.train else "test"]
        folder = self.raw_folder
        data = _read("mnist", folder, images, lambda: read_image_file(os.path.join(folder, images)))
        targets = _read("mnist", folder, labels, lambda: read_label_file(os.path.join(folder, labels)))
        return data, targets


class _LocalSVHN(datasets.SVHN):
    # torchvision refuses any SVHN file whose MD5 differs from the official one (even a re-saved
    # or subsampled copy); reading errors are reported by `_read`, so only require the file.
    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


def _check_args(name: str, split: str, image_size: int) -> None:
    check_choice(split, f"the {name} split", SPLITS, error=DataError)
    check_int(image_size, f"the {name} image_size", low=1, error=DataError)


def _require_files(name: str, folder: str, files, fix: str) -> None:
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(f"{name}: missing files in {folder}: {', '.join(missing)}; {fix}")


def _mnist_fix(root: str, raw: str, files) -> str:
    fix = ("put the MNIST idx files there, uncompressed (torchvision layout: <root>/MNIST/raw; "
           "it extracts .gz files only when downloading, and this tool never downloads)")
    if any(os.path.isfile(os.path.join(raw, f + ".gz")) for f in files):
        fix += f"; found .gz archives: extract them, e.g. `gunzip -k {raw}/*.gz`"
    if all(os.path.isfile(os.path.join(root, f)) for f in files):
        fix += f"; the files are directly in {root}: set root to the folder that contains MNIST/raw"
    return fix


def _read(name: str, folder: str, file: str, build):
    """Run ``build()``; any failure to parse ``folder/file`` becomes a `DataError` naming it."""
    try:
        return build()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - scipy, bz2, numpy and torchvision each raise their own
        path = os.path.join(folder, file)
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise DataError(f"{name}: could not read {path} (corrupt or not in torchvision's format: "
                        f"{detail}); replace it with an intact copy") from exc


def _domain(name: str, split: str, base, labels, image_size: int) -> Domain:
    targets = np.asarray(labels, dtype=np.int64).reshape(-1)
    full_name = name if split == "train" else f"{name}:{split}"
    if len(targets) == 0 or len(targets) != len(base):
        raise DataError(f"{full_name}: the files hold {len(base)} images and {len(targets)} labels; "
                        "expected the same, non-zero number")
    bad = targets[(targets < 0) | (targets >= len(DIGIT_CLASSES))]
    if bad.size:
        raise DataError(f"{full_name}: labels must be digits 0..9, found {sorted(set(bad.tolist()))[:5]}")
    dataset = TransformedDataset(base, rgb_transform(image_size))
    return Domain(name=full_name, classes=DIGIT_CLASSES, dataset=dataset, targets=targets)
