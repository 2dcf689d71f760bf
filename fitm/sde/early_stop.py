"""Choosing the early-stop checkpoint from normal training data alone (`fakes.checkpoint = 'auto'`).

FITYMI wants fakes *near* the normal class but not of it. Each snapshot's nearness is measured as a
ratio: the kNN distance of its fakes to the normal images, over the kNN distance of held-out normal images
to the same normal images (pixels in [0, 1], k = 2, the detector's score). Early snapshots give noise-like
fakes (ratio far above 1); a converged model gives fakes as near as normal images are to each other
(ratio near 1). 'auto' takes the earliest snapshot whose ratio is within a factor `fakes.auto_ratio` of the
nearest snapshot's: training is stopped once more of it no longer brings the fakes much nearer. The rule
is relative, so it holds whatever the dataset's scale of distances and however far training got. No test
image and no anomaly is looked at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fitm.detector.knn import knn_scores
from fitm.errors import FitmError
from fitm.sde.train import generate_fakes

PROBES = 256


def nearness(normal: np.ndarray, fakes: np.ndarray, held_out: np.ndarray, device: torch.device, k: int = 2) -> float:
    """Median kNN distance of fakes to `normal`, over that of held-out normal images."""
    flat = lambda images: torch.from_numpy(images.reshape(len(images), -1)).to(device, torch.float32) / 255
    bank = flat(normal)
    return float(knn_scores(flat(fakes), bank, k).median() / knn_scores(flat(held_out), bank, k).median())


def choose_auto(checkpoints: list[Path], normal: np.ndarray, config, device: torch.device) -> tuple[Path, list[dict]]:
    """The chosen checkpoint and the signal of every snapshot (step, ratio), for the record."""
    if len(normal) < 4:
        raise FitmError(f"fakes.checkpoint='auto': needs at least 4 normal training images, got {len(normal)}")
    order = np.random.default_rng(config.seed).permutation(len(normal))
    n_held = min(PROBES, len(normal) // 4)
    held_out, bank = normal[order[:n_held]], normal[order[n_held:]]
    table = []
    for path in checkpoints:
        fakes = generate_fakes(path, config, n_held, config.seed, device)
        table.append({"step": int(path.stem.split("_")[-1]), "ratio": nearness(bank, fakes, held_out, device)})
    nearest = min(row["ratio"] for row in table)
    chosen = next(row for row in table if row["ratio"] <= config.fakes.auto_ratio * nearest)
    for row in table:
        row["chosen"] = row is chosen
    return checkpoints[table.index(chosen)], table
