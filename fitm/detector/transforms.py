"""Batched image transforms on the device: the authors' per-image torchvision pipeline (Resize, RandomCrop,
RandomHorizontalFlip, Normalize) done for a whole uint8 batch at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fitm.errors import FitmError

NORMALIZE = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class BatchTransform:
    """uint8 NHWC batch -> normalised float NCHW at img_size.

    Images are resized to `resize` x `resize` (bilinear, antialiased), then cropped to img_size: a random
    crop plus random horizontal flip per image when `train`, the centre crop otherwise.
    """

    def __init__(self, det_cfg, device: torch.device, seed: int = 0):
        if det_cfg.normalize not in NORMALIZE:
            raise FitmError(
                f"detector.normalize={det_cfg.normalize!r}: expected one of {', '.join(NORMALIZE)}")
        if det_cfg.resize < det_cfg.img_size:
            raise FitmError(
                f"detector.resize={det_cfg.resize} is smaller than detector.img_size={det_cfg.img_size}: "
                "expected resize >= img_size")
        self.resize = int(det_cfg.resize)
        self.size = int(det_cfg.img_size)
        self.device = torch.device(device)
        mean, std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in NORMALIZE[det_cfg.normalize])
        # (x / 255 - mean) / std as one multiply-add.
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.steps = torch.arange(self.size, device=self.device)
        # torchvision's CenterCrop offset.
        self.centre = int(round((self.resize - self.size) / 2.0))

    def __call__(self, images: torch.Tensor, train: bool = False, rows: slice | None = None) -> torch.Tensor:
        """With `rows`, only those images are transformed, but the random draws are made for the whole batch:
        the share of a batch that one rank trains on gets the crops it would get in a one-process run."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise FitmError(
                f"detector input: expected a uint8 NHWC batch with 3 channels, got {images.dtype} "
                f"{tuple(images.shape)}")
        rows = rows if rows is not None else slice(0, len(images))
        draws = self._draw(len(images)) if train else None
        x = images[rows].to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False,
                              antialias=True)
        if train:
            x = self._crop_flip(x, *(d[rows] for d in draws))
        elif self.resize != self.size:
            c = self.centre
            x = x[:, :, c:c + self.size, c:c + self.size]
        return x * self.scale + self.shift

    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop offsets (top, left) and flips of n images."""
        span = self.resize - self.size + 1
        top = torch.randint(0, span, (n, 1), device=self.device, generator=self.generator)
        left = torch.randint(0, span, (n, 1), device=self.device, generator=self.generator)
        flip = torch.rand((n, 1), device=self.device, generator=self.generator) < 0.5
        return top, left, flip

    def _crop_flip(self, x: torch.Tensor, top, left, flip) -> torch.Tensor:
        """Per-image crop offsets and flips as two gathers: rows, then (possibly reversed) columns."""
        n, c = x.shape[:2]
        s, r = self.size, self.resize
        rows = top + self.steps
        cols = left + torch.where(flip, s - 1 - self.steps, self.steps)
        x = x.gather(2, rows.view(n, 1, s, 1).expand(n, c, s, r))
        return x.gather(3, cols.view(n, 1, 1, s).expand(n, c, s, s))
