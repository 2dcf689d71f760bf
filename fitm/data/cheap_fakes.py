"""Fakes made from the normal images themselves, without a score model (`fakes.source`): the yardsticks the score
model's fakes have to beat, through the same generate stage and the same detector.

- noised: Gaussian noise of std fakes.noise_std (0-255 scale) added to each normal image, the same on the three
  channels of a grey class (independent noise would colour it; blurred and cutpaste keep grey grey);
- blurred: a Gaussian blur of std fakes.blur_sigma pixels;
- cutpaste: CutPaste (Li et al. 2021): a rectangle of each image, 2-15% of its area with aspect ratio between
  0.3 and 1/0.3, pasted at another place of the same image. Local structure intact, the layout broken: the
  structured pseudo-anomaly of later methods.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2.functional import gaussian_blur

from fitm.data.images import is_grayscale

SOURCES = ("sde", "noised", "blurred", "cutpaste")
CUTPASTE_AREA = (0.02, 0.15)
CUTPASTE_ASPECT = (0.3, 1 / 0.3)


def cheap_fakes(normal: np.ndarray, fakes_cfg, count: int, seed: int) -> tuple[np.ndarray, dict]:
    """`count` fakes of kind fakes_cfg.source from uint8 NHWC `normal` images (all of them, in order, when
    count is their number, else a seeded choice) and the parameters that made them, for fakes.json."""
    rng = np.random.default_rng(seed)
    images = normal if count == len(normal) else normal[np.sort(rng.choice(len(normal), count, replace=False))]
    if fakes_cfg.source == "noised":
        return noised(images, fakes_cfg.noise_std, rng, is_grayscale(normal)), {"noise_std": fakes_cfg.noise_std}
    if fakes_cfg.source == "blurred":
        return blurred(images, fakes_cfg.blur_sigma), {"blur_sigma": fakes_cfg.blur_sigma}
    if fakes_cfg.source == "cutpaste":
        return cutpaste(images, rng), {"area": CUTPASTE_AREA, "aspect": CUTPASTE_ASPECT}
    raise ValueError(f"fakes.source={fakes_cfg.source!r} is not made from normal images")


def noised(images: np.ndarray, std: float, rng: np.random.Generator, grey: bool) -> np.ndarray:
    """With `grey`, one noise plane per image, broadcast to its three channels."""
    noise = rng.normal(0, std, images.shape[:-1] + (1,) if grey else images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    kernel = 2 * int(3 * sigma) + 1
    return gaussian_blur(batch, [kernel, kernel], [sigma, sigma]).permute(0, 2, 3, 1).contiguous().numpy()


def cutpaste(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every image at once: each output pixel inside its image's target rectangle reads the source rectangle."""
    n, h, w, _ = images.shape
    area = rng.uniform(*CUTPASTE_AREA, n) * h * w
    aspect = np.exp(rng.uniform(np.log(CUTPASTE_ASPECT[0]), np.log(CUTPASTE_ASPECT[1]), n))
    ph = np.clip(np.round(np.sqrt(area * aspect)), 1, h).astype(int)
    pw = np.clip(np.round(np.sqrt(area / aspect)), 1, w).astype(int)
    src_y, src_x = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    dst_y, dst_x = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    ys, xs = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    inside = ((ys >= dst_y[:, None, None]) & (ys < (dst_y + ph)[:, None, None])
              & (xs >= dst_x[:, None, None]) & (xs < (dst_x + pw)[:, None, None]))
    read_y = np.where(inside, ys - dst_y[:, None, None] + src_y[:, None, None], ys)
    read_x = np.where(inside, xs - dst_x[:, None, None] + src_x[:, None, None], xs)
    return images[np.arange(n)[:, None, None], read_y, read_x]
