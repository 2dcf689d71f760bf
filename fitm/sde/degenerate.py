"""Degenerate fakes: images that are nearly flat or nearly all black or white. They are far from any class,
so a detector learns nothing about the class from them, and a snapshot that draws many is a failed one.
The same test on the normal training images is the yardstick (some real images are flat too)."""

from __future__ import annotations

import numpy as np
import torch

_CHUNK = 4096


def degenerate_masks(images: np.ndarray, cfg) -> dict[str, np.ndarray]:
    """Per-image boolean masks of uint8 NHWC `images`: 'flat' (pixel std below cfg.flat_std), 'dark' (mean
    below cfg.dark_mean), 'bright' (mean above cfg.bright_mean) and 'degenerate', any of the three.
    Thresholds are on the 0-255 scale (the fakes.degenerate section of the config)."""
    std, mean = np.empty(len(images)), np.empty(len(images))
    for start in range(0, len(images), _CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + _CHUNK])).flatten(1).float()
        std[start:start + len(x)] = x.std(1, correction=0).numpy()
        mean[start:start + len(x)] = x.mean(1).numpy()
    masks = {"flat": std < cfg.flat_std, "dark": mean < cfg.dark_mean, "bright": mean > cfg.bright_mean}
    masks["degenerate"] = masks["flat"] | masks["dark"] | masks["bright"]
    return masks


def degenerate_fraction(images: np.ndarray, cfg) -> float:
    """The fraction of `images` that are flat, dark or bright (see degenerate_masks)."""
    return float(degenerate_masks(images, cfg)["degenerate"].mean()) if len(images) else 0.0
