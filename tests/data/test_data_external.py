"""MNIST/SVHN/USPS/ImageFolder loaders, run on tiny fake datasets written in torchvision's formats."""

from __future__ import annotations

import bz2
import gzip
import os
import re

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mlflow_transfer.data import load_domain
from mlflow_transfer.data.domain import DIGIT_CLASSES
from mlflow_transfer.data.external import load_mnist, load_svhn, load_usps
from mlflow_transfer.data.imagefolder import load_imagefolder
from mlflow_transfer.errors import DataError

N = 20
LABELS = np.arange(N, dtype=np.int64) % 10


# --------------------------------------------------------------------------- fake files


def _idx_bytes(array: np.ndarray) -> bytes:
    # idx format: big-endian magic (0x08 = uint8, then the number of dims), big-endian dims, data.
    magic = 0x0800 + array.ndim
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _mnist_images(n: int = N) -> np.ndarray:
    # Image i is a constant grey of 10 * i, so any resize keeps its value.
    return (np.arange(n, dtype=np.uint8)[:, None, None] * 10) * np.ones((1, 28, 28), np.uint8)


def write_mnist(root, split: str = "train", images=None, labels=None) -> str:
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    images = _mnist_images() if images is None else images
    labels = LABELS if labels is None else labels
    with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
        f.write(_idx_bytes(images))
    with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
        f.write(_idx_bytes(np.asarray(labels)))
    return raw


def write_svhn(root, split: str = "train", n: int = N) -> np.ndarray:
    """Writes ``<split>_32x32.mat``; returns the raw SVHN labels (1..10, 10 meaning digit 0)."""
    x = np.zeros((32, 32, 3, n), np.uint8)
    x[:, :, 0], x[:, :, 1], x[:, :, 2] = 200, 100, 50  # distinct channels to catch a channel mix-up
    raw = np.where(LABELS[:n] == 0, 10, LABELS[:n])
    scipy.io.savemat(os.path.join(root, f"{split}_32x32.mat"), {"X": x, "y": raw.reshape(-1, 1)})
    return raw


def write_usps(root, split: str = "train", n: int = N) -> None:
    # libsvm lines: "<label 1..10> 1:<v> ... 256:<v>" with pixel values in [-1, 1].
    lines = []
    for i in range(n):
        value = -1.0 + 2.0 * i / (n - 1)
        pixels = " ".join(f"{j + 1}:{value:.6f}" for j in range(256))
        lines.append(f"{LABELS[i] + 1} {pixels}\n")
    name = "usps.bz2" if split == "train" else "usps.t.bz2"
    with bz2.open(os.path.join(root, name), "wt") as f:
        f.writelines(lines)


def write_png(path, size=(30, 20), color=(255, 0, 0)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def office(tmp_path):
    """office/amazon uses the ``images/<class>`` layout, office/dslr the flat ``<class>`` layout."""
    root = tmp_path / "office"
    for i in range(3):
        write_png(root / "amazon" / "images" / "bike" / f"{i}.png", color=(0, 255, 0))
        write_png(root / "amazon" / "images" / "back_pack" / f"{i}.jpg", color=(255, 0, 0))
    write_png(root / "amazon" / "images" / "bike" / "nested" / "deep.png", color=(0, 255, 0))
    (root / "amazon" / "images" / ".ipynb_checkpoints").mkdir()
    (root / "amazon" / "images" / "notes.txt").write_text("not a class")
    for i in range(2):
        write_png(root / "dslr" / "mug" / f"{i}.png", size=(50, 40), color=(0, 0, 255))
        write_png(root / "dslr" / "bike" / f"{i}.png", size=(50, 40), color=(0, 255, 0))
    return root


def check_items(domain, image_size: int, n: int | None = None) -> None:
    assert len(domain) == len(domain.targets) == len(domain.dataset)
    assert domain.targets.dtype == np.int64 and domain.targets.shape == (len(domain),)
    for i in (0, len(domain) - 1) if n is None else range(n):
        image, label = domain.dataset[i]
        assert image.dtype == torch.float32 and image.shape == (3, image_size, image_size)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert type(label) is int and label == domain.targets[i]


# --------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("image_size", [32, 64])
def test_mnist_items_labels_and_resize(tmp_path, image_size):
    write_mnist(tmp_path)
    domain = load_mnist(root=str(tmp_path), image_size=image_size)
    assert domain.name == "mnist" and domain.classes == DIGIT_CLASSES
    np.testing.assert_array_equal(domain.targets, LABELS)
    check_items(domain, image_size, n=N)
    image, _ = domain.dataset[7]
    assert torch.allclose(image, torch.full_like(image, 70 / 255), atol=1e-6)  # grey -> 3 equal channels


def test_mnist_test_split_needs_only_its_own_files(tmp_path):
    write_mnist(tmp_path, split="test", images=_mnist_images(5), labels=LABELS[:5])
    domain = load_mnist(root=str(tmp_path), image_size=28, split="test")
    assert domain.name == "mnist:test" and len(domain) == 5
    check_items(domain, 28)


def test_mnist_missing_files_named_with_folder(tmp_path):
    raw = os.path.join(tmp_path, "MNIST", "raw")
    with pytest.raises(DataError, match=re.escape(raw)) as err:
        load_mnist(root=str(tmp_path), image_size=32)
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte" in str(err.value)
    assert "uncompressed" in str(err.value)


def test_mnist_one_missing_file_named_alone(tmp_path):
    raw = write_mnist(tmp_path)
    os.remove(os.path.join(raw, "train-labels-idx1-ubyte"))
    with pytest.raises(DataError, match=r"missing files in .*: train-labels-idx1-ubyte;"):
        load_mnist(root=str(tmp_path), image_size=32)


def test_mnist_gz_only_says_extract(tmp_path):
    raw = write_mnist(tmp_path)
    for name in os.listdir(raw):
        path = os.path.join(raw, name)
        with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
            dst.write(src.read())
        os.remove(os.path.join(raw, name))
    with pytest.raises(DataError, match=r"found \.gz archives: extract them"):
        load_mnist(root=str(tmp_path), image_size=32)


def test_mnist_root_pointing_at_raw_folder_is_explained(tmp_path):
    raw = write_mnist(tmp_path)
    with pytest.raises(DataError, match="set root to the folder that contains MNIST/raw"):
        load_mnist(root=raw, image_size=32)


def test_mnist_corrupt_file_named(tmp_path):
    raw = write_mnist(tmp_path)
    with open(os.path.join(raw, "train-images-idx3-ubyte"), "wb") as f:
        f.write(b"this is not an idx file")
    with pytest.raises(DataError, match=r"could not read \S*train-images-idx3-ubyte \(corrupt"):
        load_mnist(root=str(tmp_path), image_size=32)


def test_mnist_labels_file_with_wrong_shape_named(tmp_path):
    raw = write_mnist(tmp_path)
    with open(os.path.join(raw, "train-labels-idx1-ubyte"), "wb") as f:
        f.write(_idx_bytes(_mnist_images()))  # an image file where the labels belong
    with pytest.raises(DataError, match=r"could not read \S*train-labels-idx1-ubyte .*1 dimension"):
        load_mnist(root=str(tmp_path), image_size=32)


def test_mnist_image_label_count_mismatch(tmp_path):
    write_mnist(tmp_path, labels=LABELS[:N - 1])
    with pytest.raises(DataError, match=f"{N} images and {N - 1} labels"):
        load_mnist(root=str(tmp_path), image_size=32)


def test_mnist_labels_outside_digits(tmp_path):
    write_mnist(tmp_path, labels=np.full(N, 12))
    with pytest.raises(DataError, match=r"labels must be digits 0\.\.9, found \[12\]"):
        load_mnist(root=str(tmp_path), image_size=32)


# --------------------------------------------------------------------------- SVHN


@pytest.mark.parametrize("image_size", [32, 64])
def test_svhn_items_label_10_is_digit_0(tmp_path, image_size):
    raw = write_svhn(tmp_path)
    domain = load_svhn(root=str(tmp_path), image_size=image_size)
    assert domain.name == "svhn" and domain.classes == DIGIT_CLASSES
    assert 10 in raw
    np.testing.assert_array_equal(domain.targets, np.where(raw == 10, 0, raw))
    check_items(domain, image_size, n=N)
    image, _ = domain.dataset[0]
    expected = torch.tensor([200, 100, 50]) / 255
    torch.testing.assert_close(image.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)


def test_svhn_test_split(tmp_path):
    write_svhn(tmp_path, split="test", n=4)
    domain = load_svhn(root=str(tmp_path), image_size=32, split="test")
    assert domain.name == "svhn:test" and len(domain) == 4


def test_svhn_missing_file(tmp_path):
    write_svhn(tmp_path, split="test")
    expected = rf"svhn: missing files in {re.escape(str(tmp_path))}: train_32x32\.mat;"
    with pytest.raises(DataError, match=expected):
        load_svhn(root=str(tmp_path), image_size=32)


def test_svhn_corrupt_file_named(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(DataError, match=r"could not read .*train_32x32\.mat"):
        load_svhn(root=str(tmp_path), image_size=32)


def test_svhn_mat_without_expected_keys(tmp_path):
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"images": np.zeros((2, 2))})
    with pytest.raises(DataError, match=r"train_32x32\.mat .*KeyError"):
        load_svhn(root=str(tmp_path), image_size=32)


# --------------------------------------------------------------------------- USPS


@pytest.mark.parametrize("image_size", [32, 64])
def test_usps_items_and_labels(tmp_path, image_size):
    write_usps(tmp_path)
    domain = load_usps(root=str(tmp_path), image_size=image_size)
    assert domain.name == "usps" and domain.classes == DIGIT_CLASSES
    np.testing.assert_array_equal(domain.targets, LABELS)  # file labels 1..10 -> 0..9
    check_items(domain, image_size, n=N)
    first, _ = domain.dataset[0]
    last, _ = domain.dataset[N - 1]
    assert first.max() == 0.0 and last.min() == 1.0  # pixel -1 -> black, +1 -> white


def test_usps_test_split(tmp_path):
    write_usps(tmp_path, split="test", n=3)
    domain = load_usps(root=str(tmp_path), image_size=16, split="test")
    assert domain.name == "usps:test" and len(domain) == 3
    check_items(domain, 16)


def test_usps_missing_file_says_keep_compressed(tmp_path):
    with pytest.raises(DataError, match=r"usps: missing files in .*: usps\.t\.bz2; .*bzip2-compressed"):
        load_usps(root=str(tmp_path), image_size=32, split="test")


def test_usps_corrupt_file_named(tmp_path):
    (tmp_path / "usps.bz2").write_text("1 1:0.5 2:0.5\n")  # plain text, not bzip2
    with pytest.raises(DataError, match=r"could not read .*usps\.bz2"):
        load_usps(root=str(tmp_path), image_size=32)


def test_usps_truncated_rows_named(tmp_path):
    with bz2.open(tmp_path / "usps.bz2", "wt") as f:
        f.write("1 1:0.5 2:0.5\n2 1:0.1\n")  # far fewer than 256 pixels per row
    with pytest.raises(DataError, match=r"could not read .*usps\.bz2"):
        load_usps(root=str(tmp_path), image_size=32)


# --------------------------------------------------------------------------- shared argument checks


@pytest.mark.parametrize("loader", [load_mnist, load_svhn, load_usps])
def test_bad_split_lists_allowed(tmp_path, loader):
    with pytest.raises(DataError, match=r"Expected the \w+ split as one of \('train', 'test'\); got 'extra'\.$"):
        loader(root=str(tmp_path), image_size=32, split="extra")


@pytest.mark.parametrize("image_size", [0, -3, 2.5, True])
def test_bad_image_size(tmp_path, image_size):
    write_usps(tmp_path)
    with pytest.raises(DataError, match=r"Expected the usps image_size as an integer >= 1; got .+\.$"):
        load_usps(root=str(tmp_path), image_size=image_size)
    with pytest.raises(DataError, match=r"Expected the imagefolder image_size as an integer >= 1; got .+\.$"):
        load_imagefolder(root=str(tmp_path), image_size=image_size)


# --------------------------------------------------------------------------- ImageFolder


@pytest.mark.parametrize("image_size", [32, 64])
def test_imagefolder_images_layout(office, image_size):
    domain = load_imagefolder(root=str(office), image_size=image_size, subset="amazon")
    assert domain.name == "amazon"
    assert domain.classes == ("back_pack", "bike")  # sorted; hidden folder and stray file ignored
    np.testing.assert_array_equal(domain.targets, [0, 0, 0, 1, 1, 1, 1])  # includes the nested image
    check_items(domain, image_size, n=len(domain))
    image, label = domain.dataset[0]
    assert label == 0
    torch.testing.assert_close(image.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=1e-2, rtol=0)


def test_imagefolder_flat_layout(office):
    domain = load_imagefolder(root=str(office), image_size=32, subset="dslr")
    assert domain.classes == ("bike", "mug")
    np.testing.assert_array_equal(domain.targets, [0, 0, 1, 1])
    check_items(domain, 32, n=4)


def test_imagefolder_without_subset_uses_root(office):
    domain = load_imagefolder(root=str(office / "dslr") + os.sep, image_size=24)
    assert domain.name == "dslr" and len(domain) == 4


def test_imagefolder_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "d" / "cls" / "g.png"
    os.makedirs(path.parent)
    Image.new("L", (10, 10), 128).save(path)
    image, _ = load_imagefolder(root=str(tmp_path / "d"), image_size=16).dataset[0]
    assert image.shape == (3, 16, 16)
    torch.testing.assert_close(image, torch.full_like(image, 128 / 255))


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"root folder .*nowhere does not exist"):
        load_imagefolder(root=str(tmp_path / "nowhere"), image_size=32)


def test_imagefolder_missing_subset_lists_existing(office):
    expected = r"subset folder .*webcam does not exist; subsets found in .*: amazon, dslr$"
    with pytest.raises(DataError, match=expected):
        load_imagefolder(root=str(office), image_size=32, subset="webcam")


def test_imagefolder_no_class_folders(tmp_path):
    write_png(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match=r"no class folders in .*flat; expected"):
        load_imagefolder(root=str(tmp_path), image_size=32, subset="flat")


def test_imagefolder_empty_class_named(office):
    (office / "dslr" / "calculator").mkdir()
    (office / "dslr" / "calculator" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder\(s\) with no images in .*dslr: calculator \("):
        load_imagefolder(root=str(office), image_size=32, subset="dslr")


def test_imagefolder_corrupt_image_named_when_read(office):
    (office / "dslr" / "mug" / "0.png").write_bytes(b"not a png")
    domain = load_imagefolder(root=str(office), image_size=32, subset="dslr")
    with pytest.raises(DataError, match=r"cannot read image .*mug.0\.png"):
        domain.dataset[2]


# --------------------------------------------------------------------------- through the registry


def test_registry_loads_mnist(tmp_path):
    write_mnist(tmp_path)
    domain = load_domain("mnist", image_size=32, root=str(tmp_path))
    assert domain.name == "mnist" and len(domain) == N
    check_items(domain, 32)


def test_registry_passes_split_and_subset(tmp_path, office):
    write_svhn(tmp_path, split="test", n=3)
    assert load_domain("svhn", image_size=32, root=str(tmp_path), split="test").name == "svhn:test"
    assert load_domain("imagefolder", image_size=32, root=str(office), subset="dslr").name == "dslr"


@pytest.mark.parametrize("name", ["mnist", "svhn", "usps", "imagefolder"])
def test_registry_requires_root(name):
    with pytest.raises(DataError, match="reads a local folder: set its `root`"):
        load_domain(name, image_size=32)
