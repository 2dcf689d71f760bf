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
snapshot's. The rule is relative, so it holds whatever the dataset's scale of distances and however far training
got. A snapshot whose probes are mostly degenerate (flat, dark or bright images: fitm.sde.degenerate) is passed
over. No test image and no anomaly is looked at.

It decides while the score model trains: each snapshot is measured as soon as it is written, and training stops
once the choice has stayed the same over `fakes.patience` further snapshots (the later snapshots are then never
trained). A later snapshot could still have changed it only by being nearer than the chosen one's nearness over
auto_ratio after `patience` snapshots that were not: the rule bets that the fakes do not get suddenly nearer
after they have stopped getting nearer.
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


def settled(choices: list[int | None], patience: int) -> bool:
    """Whether the latest choice (None: none usable yet) has stayed the same over `patience` further snapshots."""
    recent = choices[-(patience + 1):]
    return len(recent) == patience + 1 and recent[0] is not None and len(set(recent)) == 1


class AutoChoice:
    """'auto' measuring each snapshot as training writes it (`observe`, the `after_snapshot` of
    train_score_model), and saying when the choice is settled."""

    def __init__(self, files: ScoreModelFiles, normal: np.ndarray, config, runtime: Runtime):
        self.files, self.config, self.runtime = files, config, runtime
        self.held_out, self.bank = _probes(normal, config.seed)
        self.table: list[dict] = []
        self.choices: list[int | None] = []  # the choice after each snapshot measured; None while none is usable

    def observe(self, step: int) -> bool:
        """Measure snapshot `step`; True once the choice has not changed over fakes.patience snapshots."""
        model = ema_model(self.files.load_checkpoint(step), self.config, self.runtime.device)
        fakes = generate_fakes(model, self.config, len(self.held_out), self.config.seed, self.runtime)
        self.table.append({"step": step, **nearness(self.bank, fakes, self.held_out, self.runtime.device),
                           "degenerate": degenerate_fraction(fakes, self.config.fakes.degenerate)})
        self.choices.append(self.step if any(self._usable()) else None)
        return settled(self.choices, self.config.fakes.patience)

    @property
    def step(self) -> int:
        """The snapshot chosen among those measured. A mostly degenerate one is never chosen while another
        is not."""
        chosen = earliest_near([row["nearness"] for row in self.table], self.config.fakes.auto_ratio, self._usable())
        return self.table[chosen]["step"]

    def _usable(self) -> list[bool]:
        return [row["degenerate"] <= MOSTLY_DEGENERATE for row in self.table]

    def rows(self, snapshots: list[int]) -> list[dict]:
        """The signal of every snapshot measured, which was chosen, and the snapshots never trained."""
        measured = {row["step"]: row for row in self.table}
        chosen = self.step
        blank = dict.fromkeys(("closeness", "coverage", "nearness", "degenerate"), "")
        return [{**(measured.get(step) or {"step": step, **blank}), "trained": step in measured,
                 "chosen": step == chosen} for step in snapshots]
