"""Pixel AUROC and AUPRO against cases computed by hand, and per-defect AUROC and confusion counts."""

from __future__ import annotations

import numpy as np
import pytest

from fitm.detector.evaluate import auroc_per_group, confusion
from fitm.detector.pixel_metrics import aupro, pixel_auroc, pro_curve
from fitm.errors import FitmError

# Two 1x4 images. Image 0: one region of 2 pixels (0, 1); image 1: one region of 1 pixel (3). 5 normal pixels.
MASKS = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 1]]])
MAPS = np.array([[[0.9, 0.45, 0.5, 0.1]], [[0.3, 0.0, 0.4, 0.8]]])


def test_pro_curve_and_aupro_by_hand():
    # Descending: 0.9 (region a, half of it: pro 1/2 x 1/2), 0.8 (region b whole: pro 0.75), 0.5 (normal: fpr 0.2),
    # 0.45 (the rest of a: pro 1), 0.4 (fpr 0.4), 0.3, 0.1, 0.0 (fpr 0.6, 0.8, 1).
    fpr, pro = pro_curve(MAPS, MASKS)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.2, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(pro, [0, 0.25, 0.75, 0.75, 1, 1, 1, 1, 1])
    # Up to fpr 0.3: 0.2 x 0.75 + 0.1 x 1 = 0.25, over 0.3.
    assert aupro(MAPS, MASKS) == pytest.approx(0.25 / 0.3)
    assert aupro(MAPS, MASKS, max_fpr=1.0) == pytest.approx(0.2 * 0.75 + 0.8)


def test_pixel_auroc_by_hand():
    # Anomalous 0.9, 0.8, 0.45 against normal 0.5, 0.1, 0.3, 0.0, 0.4: 5 + 5 + 4 of 15 pairs ordered right.
    assert pixel_auroc(MAPS, MASKS) == pytest.approx(14 / 15)


def test_regions_count_equally_whatever_their_size():
    """A map that finds the small region and misses the large one has PRO 1/2, not the pixel share (1/10)."""
    masks = np.zeros((1, 10, 10), np.uint8)
    masks[0, :3, :3] = 1  # 9 pixels
    masks[0, 9, 9] = 1  # 1 pixel, not touching the first (8-connected regions)
    maps = np.where(masks, 0.0, 0.2)  # the regions below every normal pixel ...
    maps[0, 9, 9] = 1.0  # ... but the small one's pixel
    assert aupro(maps, masks) == pytest.approx(0.5)
    maps[0, :3, :3] = 0.5
    assert aupro(maps, masks) == pytest.approx(1.0)


def test_diagonal_neighbours_are_one_region_and_images_never_join():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = 1  # one 8-connected region of 2 pixels
    masks[1, 0, 0] = 1  # its own region, in the next image
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 1.0  # half of region 1: PRO (1/2 + 0) / 2 regions
    fpr, pro = pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.25) and fpr[1] == 0


def test_ties_are_one_threshold():
    masks = np.array([[[1, 0]]])
    maps = np.array([[[0.5, 0.5]]])
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 1])
    np.testing.assert_allclose(pro, [0, 1])
    assert aupro(maps, masks) == pytest.approx(0.15)  # the diagonal's area up to 0.3 (0.045), over 0.3
    assert pixel_auroc(maps, masks) == pytest.approx(0.5)


def test_masks_without_both_kinds_or_of_another_shape_are_refused():
    with pytest.raises(FitmError, match="no anomalous pixel"):
        aupro(MAPS, np.zeros_like(MASKS))
    with pytest.raises(FitmError, match="one shape"):
        pixel_auroc(MAPS, MASKS[:, :, :3])
    with pytest.raises(FitmError, match="NaN"):
        pixel_auroc(np.full(MAPS.shape, np.nan), MASKS)


def test_auroc_per_defect_and_confusion_by_hand():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.15, 0.8, 0.25])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    groups = np.array(["good", "good", "good", "crack", "crack", "hole", "hole"])
    # crack 0.9, 0.15 against 0.1, 0.2, 0.3: 3 + 1 of 6; hole 0.8, 0.25: 3 + 2 of 6.
    assert auroc_per_group(scores, labels, groups) == pytest.approx({"crack": 4 / 6, "hole": 5 / 6})
    assert confusion(scores, labels, 0.22) == {"tp": 3, "fp": 1, "tn": 2, "fn": 1}
