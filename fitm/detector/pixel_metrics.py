"""Localisation metrics of anomaly maps against ground-truth masks (mask 1 = anomalous pixel), as MVTec AD's
benchmark defines them: pixel AUROC over all test pixels, and AUPRO, the area under the per-region-overlap curve up
to a false positive rate of 0.3, divided by 0.3 (Bergmann et al., IJCV 2021)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from fitm.errors import FitmError

# Pixel AUROC on more pixels than this takes an evenly spaced subsample of them (a fixed stride: deterministic).
MAX_AUROC_PIXELS = 20_000_000
# Connected regions of a mask are 8-connected, as in MVTec AD's evaluation code; regions never span two images.
_EIGHT_CONNECTED = np.zeros((3, 3, 3), bool)
_EIGHT_CONNECTED[1] = True


def _check(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, np.float64), np.asarray(masks).astype(bool)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise FitmError(f"pixel metrics: expected (N, H, W) maps and masks of one shape, got {maps.shape} and "
                        f"{masks.shape}")
    if not masks.any() or masks.all():
        raise FitmError("pixel metrics: the masks mark no anomalous pixel, or only anomalous ones; pixel AUROC and "
                        "AUPRO need both")
    if not np.isfinite(maps).all():
        raise FitmError("pixel metrics: some anomaly-map values are NaN or infinite")
    return maps, masks


def pixel_auroc(maps, masks) -> float:
    """AUROC of every test pixel's map value, anomalous pixels positive."""
    maps, masks = _check(maps, masks)
    values, labels = maps.ravel(), masks.ravel()
    stride = -(-values.size // MAX_AUROC_PIXELS)
    if stride > 1:
        values, labels = values[::stride], labels[::stride]
    return float(roc_auc_score(labels, values))


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every threshold over the map values, from the highest down, starting at (0, 0).

    At a threshold, fpr is the fraction of normal pixels above it, and pro the mean over all regions (connected
    components of the masks, of every image) of the fraction of the region's pixels above it. Exact: one sort of
    all pixels, each adding 1 / n_normal to fpr or 1 / (n_regions x its region's size) to pro; tied values count
    as one threshold."""
    maps, masks = _check(maps, masks)
    regions, n_regions = ndimage.label(masks, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(regions.ravel())
    regions, values = regions.ravel(), maps.ravel()
    n_normal = int((regions == 0).sum())
    step_fpr = np.where(regions == 0, 1.0 / n_normal, 0.0)
    step_pro = np.where(regions > 0, 1.0 / (n_regions * sizes[regions]), 0.0)
    order = np.argsort(-values, kind="stable")
    values, fpr, pro = values[order], np.cumsum(step_fpr[order]), np.cumsum(step_pro[order])
    last_of_tie = np.r_[values[1:] != values[:-1], True]
    return np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]


def aupro(maps, masks, max_fpr: float = 0.3) -> float:
    """The area under the PRO curve for fpr in [0, max_fpr] (the curve interpolated linearly at max_fpr),
    divided by max_fpr: 1 is perfect localisation."""
    fpr, pro = pro_curve(maps, masks)
    fpr, pro = np.minimum(fpr, 1.0), np.minimum(pro, 1.0)  # rounding in the sums
    inside = fpr <= max_fpr
    cut_pro = np.interp(max_fpr, fpr, pro)  # fpr is non-decreasing
    fpr, pro = np.r_[fpr[inside], max_fpr], np.r_[pro[inside], cut_pro]
    return float(np.trapezoid(pro, fpr) / max_fpr)
