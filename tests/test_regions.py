"""`regions.region_image` against hand-worked pixels."""

import numpy as np
import pytest

from mlflow_transfer.regions import CLASS_PALETTE, class_color, region_image


def test_full_gap_is_the_class_colour_and_zero_gap_is_white():
    img = region_image(np.array([[0, 1], [2, 13]]), np.array([[1.0, 1.0], [0.0, 0.25]]))
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    assert tuple(img[0, 0]) == (0x1b, 0x9e, 0x77) and tuple(img[0, 1]) == (0xd9, 0x5f, 0x02)
    assert tuple(img[1, 0]) == (255, 255, 255)
    # class 13 wraps to palette[1]; gap 0.25 -> share 0.5: halfway between white and the colour
    assert tuple(img[1, 1]) == (round((255 + 0xd9) / 2), round((255 + 0x5f) / 2), round((255 + 0x02) / 2))
    assert class_color(len(CLASS_PALETTE)) == CLASS_PALETTE[0]


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="one \\(G, G\\) shape"):
        region_image(np.zeros((2, 2)), np.zeros((3, 3)))
