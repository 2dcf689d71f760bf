"""Pictures and tables a person opens first: image grids, ROC curve, score histogram, report.html."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.utils

from fitm.io import atomic_path


def save_grid(images: np.ndarray, path, nrow: int = 10, max_images: int = 100) -> None:
    """A PNG grid of the first `max_images` uint8 NHWC images."""
    batch = torch.from_numpy(np.ascontiguousarray(images[:max_images])).permute(0, 3, 1, 2)
    with atomic_path(path) as tmp:
        torchvision.utils.save_image(batch.float() / 255, tmp, nrow=nrow, padding=2, pad_value=1.0, format="png")
