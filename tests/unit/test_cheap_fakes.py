"""Fakes made from the normal images (fakes.source): what each kind changes, and that it is seeded."""

import numpy as np
import pytest

from fitm.configs.default import get_config
from fitm.data.cheap_fakes import cheap_fakes, cutpaste
from fitm.data.images import is_grayscale


def images(n=40, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def fakes_cfg(source):
    cfg = get_config().fakes
    cfg.source = source
    return cfg


def test_cutpaste_moves_one_rectangle_of_each_image_within_it():
    normal = images()
    out = cutpaste(normal, np.random.default_rng(1))
    changed = (out != normal).any(axis=3)
    assert changed.any(axis=(1, 2)).mean() > 0.9  # a pasted patch almost always differs from what it covers
    for image, fake, mask in zip(normal, out, changed):
        ys, xs = np.nonzero(mask)
        if len(ys):
            area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert area <= 0.15 * 16 * 16 + 16  # within the patch's largest area (rounding)
            assert set(map(tuple, fake[mask])) <= set(map(tuple, image.reshape(-1, 3)))  # pixels of the image


@pytest.mark.parametrize("source", ["noised", "blurred", "cutpaste"])
def test_cheap_fakes_are_seeded_and_record_their_parameters(source):
    normal = images()
    a, params = cheap_fakes(normal, fakes_cfg(source), 40, seed=3)
    b, _ = cheap_fakes(normal, fakes_cfg(source), 40, seed=3)
    assert a.dtype == np.uint8 and a.shape == normal.shape and np.array_equal(a, b)
    assert not np.array_equal(a, normal) and params
    fewer, _ = cheap_fakes(normal, fakes_cfg(source), 10, seed=3)
    assert len(fewer) == 10


def test_noised_fakes_have_the_configured_noise():
    normal = np.full((20, 16, 16, 3), 128, np.uint8)
    fakes, params = cheap_fakes(normal, fakes_cfg("noised"), 20, seed=0)
    assert params == {"noise_std": 25.5}
    assert (fakes.astype(float) - 128).std() == pytest.approx(25.5, rel=0.05)


@pytest.mark.parametrize("source", ["noised", "blurred", "cutpaste"])
def test_fakes_of_a_grey_class_are_grey_and_of_a_colour_class_need_not_be(source):
    grey = images()[..., :1].repeat(3, axis=3)
    fakes, _ = cheap_fakes(grey, fakes_cfg(source), 40, seed=3)
    assert is_grayscale(fakes) and not np.array_equal(fakes, grey)
    if source == "noised":  # colour images get independent noise per channel, as before
        flat = np.full((20, 16, 16, 3), 128, np.uint8)
        flat[0, 0, 0, 0] = 127  # one pixel off grey: a colour class
        coloured, _ = cheap_fakes(flat, fakes_cfg(source), 20, seed=0)
        assert (coloured[..., 0] != coloured[..., 1]).mean() > 0.5
