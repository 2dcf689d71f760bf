"""Choosing the early-stop checkpoint from normal training data alone (`fakes.checkpoint = 'auto'`).

FITYMI wants fakes *near* the normal class but not of it. A snapshot's fakes are near when they are close
to normal images (each fake has normal neighbours) *and* cover them (each normal image has fake
neighbours): a model that draws the same few flat, saturated blocks passes the first test and fails the second. Both
are measured against how near normal images are to each other (held-out normals, pixels in [0, 1], k = 2,
the detector's score), so 1 means "as near as normal images are to each other":

    closeness = median kNN distance of fakes to normals / that of held-out normals to the same normals
    coverage  = median kNN distance of held-out normals to the fakes / that to as many other normals
    nearness  = sqrt(closeness * coverage)

'auto' takes the earliest snapshot whose nearness is within a factor `fakes.auto_ratio` of the nearest
snapshot's: training is stopped once more of it no longer brings the fakes much nearer. The rule is
relative, so it holds whatever the dataset's scale of distances and however far training got. No test image
and no anomaly is looked at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fitm.detector.knn import knn_scores, pixel_vectors
from fitm.errors import FitmError
from fitm.sde.train import checkpoint_step, generate_fakes

PROBES = 256
K = 2


def nearness(normal: np.ndarray, fakes: np.ndarray, held_out: np.ndarray, device: torch.device) -> dict:
    """closeness, coverage and nearness of `fakes` (see the module docstring); `normal` needs more images
    than `fakes` so that coverage can compare against as many normal images."""
    bank, fake, held = (pixel_vectors(images, device) for images in (normal, fakes, held_out))
    median = lambda queries, reference: float(knn_scores(queries, reference, K).median())
    closeness = median(fake, bank) / median(held, bank)
    coverage = median(held, fake) / median(held, bank[: len(fake)])
    return {"closeness": closeness, "coverage": coverage, "nearness": float(np.sqrt(closeness * coverage))}


def earliest_near(nearness_by_snapshot: list[float], factor: float) -> int:
    """Index of the earliest snapshot within `factor` of the nearest one."""
    nearest = min(nearness_by_snapshot)
    return next(i for i, value in enumerate(nearness_by_snapshot) if value <= factor * nearest)


def choose_auto(checkpoints: list[Path], normal: np.ndarray, config, device: torch.device) -> tuple[Path, list[dict]]:
    """The chosen checkpoint and the signal of every snapshot, for the record."""
    if len(normal) < 3 * K:
        raise FitmError(f"fakes.checkpoint='auto': needs at least {3 * K} normal training images, got {len(normal)}")
    order = np.random.default_rng(config.seed).permutation(len(normal))
    n_probes = min(PROBES, len(normal) // 3)
    held_out, bank = normal[order[:n_probes]], normal[order[n_probes:]]
    table = []
    for path in checkpoints:
        fakes = generate_fakes(path, config, n_probes, config.seed, device)
        table.append({"step": checkpoint_step(path), **nearness(bank, fakes, held_out, device)})
    chosen = earliest_near([row["nearness"] for row in table], config.fakes.auto_ratio)
    for i, row in enumerate(table):
        row["chosen"] = i == chosen
    return checkpoints[chosen], table
