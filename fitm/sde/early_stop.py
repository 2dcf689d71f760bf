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
relative, so it holds whatever the dataset's scale of distances and however far training got. A snapshot
whose probes are mostly degenerate (flat, dark or bright images: fitm.sde.degenerate) is passed over. No test
image and no anomaly is looked at.
"""

from __future__ import annotations

import numpy as np
import torch

from fitm.errors import FitmError
from fitm.knn import knn_scores, pixel_vectors
from fitm.run import ScoreModelFiles
from fitm.runtime import Runtime
from fitm.sde.degenerate import degenerate_fraction
from fitm.sde.train import ema_model, generate_fakes

PROBES = 256
K = 2
MOSTLY_DEGENERATE = 0.5


def nearness(normal: np.ndarray, fakes: np.ndarray, held_out: np.ndarray, device: torch.device) -> dict:
    """closeness, coverage and nearness of `fakes` (see the module docstring); `normal` needs more images
    than `fakes` so that coverage can compare against as many normal images."""
    bank, fake, held = (pixel_vectors(images, device) for images in (normal, fakes, held_out))
    median = lambda queries, reference: float(knn_scores(queries, reference, K).median())
    closeness = median(fake, bank) / median(held, bank)
    coverage = median(held, fake) / median(held, bank[: len(fake)])
    return {"closeness": closeness, "coverage": coverage, "nearness": float(np.sqrt(closeness * coverage))}


def earliest_near(nearness_by_snapshot: list[float], factor: float, usable: list[bool] | None = None) -> int:
    """Index of the earliest usable snapshot within `factor` of the nearest usable one (all usable by default;
    when none is, all are considered)."""
    usable = usable if usable is not None and any(usable) else [True] * len(nearness_by_snapshot)
    nearest = min(value for value, ok in zip(nearness_by_snapshot, usable) if ok)
    return next(i for i, (value, ok) in enumerate(zip(nearness_by_snapshot, usable)) if ok and value <= factor * nearest)


def _probes(normal: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out normals, the bank of the others): the yardstick of nearness, the same for every snapshot."""
    if len(normal) < 3 * K:
        raise FitmError(f"fakes.checkpoint='auto': needs at least {3 * K} normal training images, got {len(normal)}")
    order = np.random.default_rng(seed).permutation(len(normal))
    n_probes = min(PROBES, len(normal) // 3)
    return normal[order[:n_probes]], normal[order[n_probes:]]


def fakes_signal(normal: np.ndarray, fakes: np.ndarray, config, device) -> dict:
    """closeness, coverage and nearness of (up to PROBES of) the fakes written, as 'auto' measures snapshots;
    empty when there are too few normal images to measure it."""
    if len(normal) < 3 * K:
        return {}
    held_out, bank = _probes(normal, config.seed)
    return nearness(bank, fakes[: len(held_out)], held_out, device)


def choose_auto(files: ScoreModelFiles, steps: list[int], normal: np.ndarray, config,
                runtime: Runtime) -> tuple[int, list[dict]]:
    """The chosen snapshot step and the signal of every snapshot, for the record. A snapshot whose probes are
    mostly degenerate (flat, dark or bright: fitm.sde.degenerate) is never chosen while another is not."""
    held_out, bank = _probes(normal, config.seed)
    n_probes = len(held_out)
    table = []
    for step in steps:
        model = ema_model(files.load_checkpoint(step), config, runtime.device)
        fakes = generate_fakes(model, config, n_probes, config.seed, runtime)
        table.append({"step": step, **nearness(bank, fakes, held_out, runtime.device),
                      "degenerate": degenerate_fraction(fakes, config.fakes.degenerate)})
    usable = [row["degenerate"] <= MOSTLY_DEGENERATE for row in table]
    chosen = earliest_near([row["nearness"] for row in table], config.fakes.auto_ratio, usable)
    for i, row in enumerate(table):
        row["chosen"] = i == chosen
    return steps[chosen], table
