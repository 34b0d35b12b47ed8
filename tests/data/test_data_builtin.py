"""Built-in domains (printed-digits, printed-digits-clean, handwritten-digits), splits, class alignment and `load_domain`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mlflow_transfer.data import DOMAINS, align_classes, load_domain, split_domain
from mlflow_transfer.data.domain import DIGIT_CLASSES, tensor_domain
from mlflow_transfer.data.printed import font_paths, load_printed_digits
from mlflow_transfer.errors import DataError


def _stack(domain):
    """All images and labels of a domain, read item by item through its dataset."""
    items = [domain.dataset[i] for i in range(len(domain))]
    images = torch.stack([image for image, _ in items])
    labels = np.array([label for _, label in items], dtype=np.int64)
    return images, labels


def make_domain(counts, classes=None, name="toy"):
    """A tiny in-memory domain with ``counts[c]`` items of class ``c``; image ``i`` is constant ``i``."""
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = np.random.default_rng(123).permutation(labels)  # classes interleaved, as in real data
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 2).contiguous()
    classes = classes or [f"c{i}" for i in range(len(counts))]
    return tensor_domain(name, classes, images, labels)


# --------------------------------------------------------------------------- printed-digits


@pytest.fixture(scope="module")
def printed():
    return load_printed_digits(size=100, image_size=32, seed=0)


def test_printed_same_seed_is_identical(printed):
    again = load_printed_digits(size=100, image_size=32, seed=0)
    images, labels = _stack(printed)
    images2, labels2 = _stack(again)
    assert torch.equal(images, images2)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(printed.targets, again.targets)


def test_printed_other_seed_differs(printed):
    other = load_printed_digits(size=100, image_size=32, seed=1)
    images, _ = _stack(printed)
    images2, _ = _stack(other)
    assert images.shape == images2.shape
    # Not just a few pixels: almost every image differs.
    differing = (images - images2).abs().flatten(1).amax(1) > 0.05
    assert differing.float().mean() > 0.9


def test_load_domain_passes_seed_to_printed_digits():
    via_registry = load_domain("printed-digits", image_size=32, seed=3, size=20)
    direct = load_printed_digits(size=20, image_size=32, seed=3)
    seed0 = load_domain("printed-digits", image_size=32, seed=0, size=20)
    assert torch.equal(_stack(via_registry)[0], _stack(direct)[0])
    assert not torch.equal(_stack(via_registry)[0], _stack(seed0)[0])


@pytest.mark.parametrize("image_size, n", [(32, 60), (48, 50)])
def test_printed_shape_dtype_range(image_size, n):
    domain = load_printed_digits(size=n, image_size=image_size, seed=0)
    images, labels = _stack(domain)
    assert len(domain) == n
    assert images.shape == (n, 3, image_size, image_size)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # Photos with digits drawn on them: not blank, and using a good part of the range.
    assert float(images.std()) > 0.05
    assert domain.targets.dtype == np.int64 and domain.targets.shape == (n,)
    np.testing.assert_array_equal(labels, domain.targets)
    assert all(type(domain.dataset[i][1]) is int for i in range(3))
    assert domain.classes == tuple(str(d) for d in range(10))


def test_printed_labels_balanced(printed):
    counts = np.bincount(printed.targets, minlength=10)
    np.testing.assert_array_equal(counts, np.full(10, 100 // 10))
    # ... and shuffled, not in class order.
    assert not np.array_equal(printed.targets, np.sort(printed.targets))


def test_font_paths_are_matplotlib_ttf_files():
    import matplotlib
    from PIL import ImageFont

    folder = (Path(matplotlib.get_data_path()) / "fonts" / "ttf").resolve()
    paths = font_paths()
    assert len(paths) > 0
    assert len(set(paths)) == len(paths)
    for path in paths:
        path = Path(path)
        assert path.is_file(), path
        assert path.suffix.lower() == ".ttf"
        assert path.resolve().parent == folder
        assert ImageFont.truetype(str(path), 20).getbbox("0")[2] > 0  # a real font with a "0" glyph


@pytest.mark.parametrize("size", [0, 5, 9])
def test_printed_size_below_ten_is_data_error(size):
    with pytest.raises(DataError, match="size"):
        load_printed_digits(size=size)
    with pytest.raises(DataError):
        load_domain("printed-digits", image_size=32, size=size)


# --------------------------------------------------------------------------- printed-digits-clean


@pytest.fixture(scope="module")
def clean():
    return load_printed_digits(size=100, image_size=32, seed=0, clean=True)


def _frame(images):
    """The one-pixel border of each image, (N, 3, 124)."""
    return torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], 2)


def test_clean_same_seed_is_identical_and_other_seed_differs(clean):
    again = load_printed_digits(size=100, image_size=32, seed=0, clean=True)
    other = load_printed_digits(size=100, image_size=32, seed=1, clean=True)
    images, labels = _stack(clean)
    assert torch.equal(images, _stack(again)[0])
    np.testing.assert_array_equal(labels, _stack(again)[1])
    differing = (images - _stack(other)[0]).abs().flatten(1).amax(1) > 0.05
    assert differing.float().mean() > 0.9


def test_load_domain_knows_printed_digits_clean():
    via_registry = load_domain("printed-digits-clean", image_size=32, seed=3, size=20)
    direct = load_printed_digits(size=20, image_size=32, seed=3, clean=True)
    cluttered = load_domain("printed-digits", image_size=32, seed=3, size=20)
    assert via_registry.name == "printed-digits-clean" and cluttered.name == "printed-digits"
    assert torch.equal(_stack(via_registry)[0], _stack(direct)[0])
    assert not torch.equal(_stack(via_registry)[0], _stack(cluttered)[0])
    assert "printed-digits-clean" in DOMAINS and DOMAINS["printed-digits-clean"].options == {"size"}


@pytest.mark.parametrize("image_size, n", [(32, 60), (48, 50)])
def test_clean_shape_dtype_range_and_balance(image_size, n):
    domain = load_printed_digits(size=n, image_size=image_size, seed=0, clean=True)
    images, labels = _stack(domain)
    assert images.shape == (n, 3, image_size, image_size) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    np.testing.assert_array_equal(labels, domain.targets)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
    assert domain.classes == DIGIT_CLASSES


def test_clean_backgrounds_are_plain_and_cluttered_ones_are_not(clean, printed):
    # Clean: the border is one colour (no photo, no neighbouring digit reaching the edge) and the
    # digit in the middle stands out from it; the cluttered domain's borders are photo crops.
    images, _ = _stack(clean)
    frame = _frame(images)
    assert float(frame.std(2).max()) < 0.02
    background = frame.mean(2)[:, :, None, None]
    centre = images[:, :, 8:24, 8:24]
    assert torch.all((centre - background).abs().amax((1, 2, 3)) > 0.3)
    cluttered_frame = _frame(_stack(printed)[0])
    assert float(cluttered_frame.std(2).mean(1).median()) > 5 * float(frame.std(2).mean(1).median())


def test_clean_size_below_ten_names_the_clean_domain():
    with pytest.raises(DataError, match=r"^Expected the printed-digits-clean size as an integer >= 10"):
        load_domain("printed-digits-clean", image_size=32, size=5)


# --------------------------------------------------------------------------- handwritten-digits


@pytest.fixture(scope="module")
def handwritten():
    return load_domain("handwritten-digits", image_size=32)


@pytest.fixture(scope="module")
def handwritten_images(handwritten):
    return _stack(handwritten)


def test_handwritten_size_shape_and_labels(handwritten, handwritten_images):
    images, labels = handwritten_images
    reference = load_digits()
    assert len(handwritten) == 1797 == len(reference.target)
    assert images.shape == (1797, 3, 32, 32)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    np.testing.assert_array_equal(handwritten.targets, reference.target)
    np.testing.assert_array_equal(labels, reference.target)
    assert handwritten.classes == DIGIT_CLASSES


def test_handwritten_three_identical_channels(handwritten_images):
    images, _ = handwritten_images
    assert torch.equal(images[:, 0], images[:, 1])
    assert torch.equal(images[:, 0], images[:, 2])


def test_handwritten_white_digits_on_black(handwritten_images):
    images, _ = handwritten_images
    grey = images[:, 0]
    frame = torch.cat([grey[:, 0, :], grey[:, -1, :], grey[:, 1:-1, 0], grey[:, 1:-1, -1]], dim=1)
    centre = grey[:, 8:24, 8:24]
    assert torch.all(frame.mean(1) < centre.mean((1, 2)))
    assert float(frame.mean()) < 0.05
    assert float(centre.mean()) > 0.2


def test_handwritten_images_are_the_sklearn_images(handwritten_images):
    # Undo the 1-pixel pad + resize roughly: average-pool back to 10x10 and drop the pad.
    images, _ = handwritten_images
    small = F.adaptive_avg_pool2d(images[:, :1], 10)[:, 0, 1:9, 1:9].numpy()
    reference = load_digits().images / 16.0
    same = np.corrcoef(small.ravel(), reference.ravel())[0, 1]
    transposed = np.corrcoef(small.ravel(), reference.transpose(0, 2, 1).ravel())[0, 1]
    inverted = np.corrcoef(small.ravel(), (1 - reference).ravel())[0, 1]
    assert same > 0.9
    assert same > transposed + 0.3
    assert inverted < 0


# --------------------------------------------------------------------------- splits


def _class_counts(targets, indices, k):
    return np.bincount(targets[indices], minlength=k)


def test_split_disjoint_and_covering(handwritten):
    splits = split_domain(handwritten, val_fraction=0.15, seed=0)
    train, val = splits.train_indices, splits.val_indices
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(handwritten)))
    assert len(val) == math.ceil(0.15 * len(handwritten))  # sklearn rounds the test share up
    assert len(splits.train) == len(train) and len(splits.val) == len(val)
    # The Subsets read the right items.
    for pos in (0, len(val) - 1):
        assert splits.val[pos][1] == handwritten.targets[val[pos]]


@pytest.mark.parametrize("seed", [0, 7])
def test_split_val_share_per_class(handwritten, seed):
    targets = handwritten.targets
    splits = split_domain(handwritten, val_fraction=0.15, seed=seed)
    per_class = _class_counts(targets, np.arange(len(targets)), 10)
    val_counts = _class_counts(targets, splits.val_indices, 10)
    assert np.all(np.abs(val_counts - 0.15 * per_class) <= 1.0)
    _, ref_val = train_test_split(np.arange(len(targets)), test_size=0.15, random_state=seed,
                                  stratify=targets)
    np.testing.assert_array_equal(val_counts, _class_counts(targets, ref_val, 10))


def test_split_other_val_fraction():
    domain = make_domain([40, 60, 100])
    splits = split_domain(domain, val_fraction=0.5, seed=0)
    np.testing.assert_array_equal(_class_counts(domain.targets, splits.val_indices, 3), [20, 30, 50])
    np.testing.assert_array_equal(_class_counts(domain.targets, splits.train_indices, 3), [20, 30, 50])


def test_split_deterministic_by_seed(handwritten):
    a = split_domain(handwritten, seed=3)
    b = split_domain(handwritten, seed=3)
    c = split_domain(handwritten, seed=4)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    np.testing.assert_array_equal(a.val_indices, b.val_indices)
    assert not np.array_equal(a.val_indices, c.val_indices)


def test_per_class_cap_caps_before_splitting():
    counts = [30, 12, 50, 25]
    domain = make_domain(counts)
    splits = split_domain(domain, val_fraction=0.2, seed=0, per_class_cap=20)
    kept = np.concatenate([splits.train_indices, splits.val_indices])
    assert len(np.unique(kept)) == len(kept)
    np.testing.assert_array_equal(_class_counts(domain.targets, kept, 4), [20, 12, 20, 20])
    # The validation share applies to the capped counts: 20 % of 20 and of 12 (rounded).
    val_counts = _class_counts(domain.targets, splits.val_indices, 4)
    assert np.all(np.abs(val_counts - 0.2 * np.array([20, 12, 20, 20])) <= 1.0)
    # The cap picks a seeded random subset, not the first items.
    again = split_domain(domain, val_fraction=0.2, seed=0, per_class_cap=20)
    np.testing.assert_array_equal(again.train_indices, splits.train_indices)
    other = split_domain(domain, val_fraction=0.2, seed=1, per_class_cap=20)
    other_kept = np.sort(np.concatenate([other.train_indices, other.val_indices]))
    assert not np.array_equal(other_kept, np.sort(kept))


@pytest.mark.parametrize("cap", [None, 40])
def test_label_budget_keeps_n_train_per_class_and_same_val(handwritten, cap):
    full = split_domain(handwritten, val_fraction=0.15, seed=2, per_class_cap=cap)
    budget = split_domain(handwritten, val_fraction=0.15, seed=2, per_class_cap=cap, label_budget=7)
    targets = handwritten.targets
    np.testing.assert_array_equal(_class_counts(targets, budget.train_indices, 10), np.full(10, 7))
    np.testing.assert_array_equal(budget.val_indices, full.val_indices)
    assert set(budget.train_indices) <= set(full.train_indices)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_out_of_range(fraction):
    with pytest.raises(DataError, match=r"Expected val_fraction as a finite number in \(0, 1\) .+; got .+\.$"):
        split_domain(make_domain([10, 10]), val_fraction=fraction)


@pytest.mark.parametrize("size", [9, 0, 2.5, "100"])
def test_printed_digits_size_below_one_per_class_is_refused(size):
    with pytest.raises(DataError, match=r"Expected the printed-digits size as an integer >= 10 \(at least one image "
                                        r"per class\); got .+\.$"):
        load_printed_digits(size=size)


def test_class_with_one_instance_is_data_error():
    domain = make_domain([10, 1, 10], classes=["cat", "dog", "fox"])
    with pytest.raises(DataError, match="dog"):
        split_domain(domain)


def test_class_left_with_one_instance_after_cap_is_data_error():
    with pytest.raises(DataError):
        split_domain(make_domain([10, 10]), per_class_cap=1)


def test_too_few_items_for_a_stratified_split_is_data_error():
    # 10 classes x 5 items, 15 % -> 8 validation items for 10 classes: cannot be stratified.
    # The recipe schema accepts per_class_cap=5 (min 2), so this is a user mistake that must be a
    # TransferError with a helpful message, not a traceback.
    with pytest.raises(DataError, match="raise per_class_cap"):
        split_domain(make_domain([5] * 10), val_fraction=0.15, per_class_cap=5)


# --------------------------------------------------------------------------- align_classes


def test_align_same_classes_same_order_keeps_labels():
    source = make_domain([3, 4, 5], classes=["a", "b", "c"], name="src")
    target = make_domain([2, 2, 2], classes=["a", "b", "c"], name="tgt")
    aligned = align_classes(source, target)
    np.testing.assert_array_equal(aligned.targets, target.targets)
    assert aligned.classes == ("a", "b", "c")


def test_align_remaps_labels_by_name():
    source = make_domain([3, 3, 3], classes=["cat", "dog", "fox"], name="src")
    target = make_domain([2, 3, 4], classes=["fox", "cat", "dog"], name="tgt")
    aligned = align_classes(source, target)
    assert aligned.classes == source.classes
    assert len(aligned) == len(target)
    for i in range(len(target)):
        original_name = target.classes[target.targets[i]]
        assert aligned.classes[aligned.targets[i]] == original_name
        image, label = aligned.dataset[i]
        assert label == aligned.targets[i]
        assert aligned.classes[label] == original_name
        assert torch.equal(image, target.dataset[i][0])
    # fox (target label 0) -> 2, cat (1) -> 0, dog (2) -> 1
    np.testing.assert_array_equal(aligned.targets, np.array([2, 0, 1])[target.targets])


def test_align_mismatch_lists_both_sides():
    source = make_domain([2, 2, 2], classes=["apple", "bike", "cup"], name="src")
    target = make_domain([2, 2, 2], classes=["bike", "cup", "desk"], name="tgt")
    with pytest.raises(DataError, match=r"only in the source: \['apple'\].*only in the target: \['desk'\]"):
        align_classes(source, target)


def test_align_subset_of_classes_is_mismatch():
    source = make_domain([2, 2, 2], classes=["a", "b", "c"], name="src")
    target = make_domain([2, 2], classes=["a", "b"], name="tgt")
    with pytest.raises(DataError, match=r"\['c'\]"):
        align_classes(source, target)


# --------------------------------------------------------------------------- load_domain


def test_load_domain_unknown_name_lists_names():
    with pytest.raises(DataError) as info:
        load_domain("cifar-10", image_size=32)
    message = str(info.value)
    assert "cifar-10" in message
    for name in DOMAINS:
        assert name in message


@pytest.mark.parametrize("name, options", [
    ("handwritten-digits", {"size": 100}),
    ("printed-digits", {"root": "/tmp"}),
    ("printed-digits", {"split": "train"}),
])
def test_load_domain_option_not_taken(name, options):
    (option,) = options
    with pytest.raises(DataError, match=option):
        load_domain(name, image_size=32, **options)


def test_load_domain_none_options_are_dropped():
    # None means "not set in the recipe": the loader keeps its default instead of failing.
    domain = load_domain("handwritten-digits", image_size=16, size=None, root=None)
    assert len(domain) == 1797
    assert domain.dataset[0][0].shape == (3, 16, 16)
