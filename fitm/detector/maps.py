"""Anomaly maps: where in an image the anomaly is. Each patch token of the fine-tuned backbone is scored as an image
is (fitm.knn: the sum of squared L2 distances to its k nearest neighbours), against a bank of the normal training
images' patch tokens; the grid of patch scores is upsampled to the image, undoing the eval transform's resize and
centre crop, and smoothed by a Gaussian (PatchCore's recipe, Roth et al. 2022, on FITYMI's fine-tuned features)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from fitm.detector.transforms import BatchTransform
from fitm.errors import FitmError
from fitm.knn import knn_scores
from fitm.runtime import Runtime, log

# Before the coreset, the tokens kept while extracting: at most this many times detector.maps.bank_size, drawn at
# random, so that the tokens of every normal image (5,000 CIFAR images give 980,000 at ViT-B/16) never sit in memory.
POOL_FACTOR = 8
# The coreset's k-center search runs on a random projection of the tokens to this many dimensions (PatchCore's
# Johnson-Lindenstrauss step): distances are nearly kept and each of its bank_size steps costs less.
PROJECTION_DIM = 128


class NoPatchTokens(FitmError):
    """The backbone has neither patch tokens nor a feature map: it scores images, but draws no map."""


def spatial_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(N, h, w, D) patch tokens from `model.forward_features`: a ViT's tokens without its prefix (CLS and register)
    tokens, or a CNN's feature map; a backbone with neither is refused in one line."""
    if tokens.ndim == 3 and hasattr(model, "num_prefix_tokens"):
        patches = tokens[:, model.num_prefix_tokens:]
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        h, w = grid if grid is not None else (math.isqrt(patches.shape[1]),) * 2
        if h * w == patches.shape[1]:
            return patches.reshape(len(tokens), h, w, tokens.shape[2])
    elif tokens.ndim == 4:
        return tokens if getattr(model, "output_fmt", "NCHW") == "NHWC" else tokens.permute(0, 2, 3, 1)
    raise NoPatchTokens(f"anomaly maps: the {type(model).__name__}'s forward_features gives {tuple(tokens.shape)}, neither "
                    "patch tokens on a grid nor a feature map; maps need a backbone with one (a ViT or a CNN)")


class MapGeometry(torch.nn.Module):
    """Patch scores (N, h, w) -> maps (N, image_size, image_size): bilinear to the detector's input, the Gaussian,
    the centre crop's border filled by its edge, then back to the stored image's size. Plain tensor operations,
    so that the ONNX export traces the same steps."""

    def __init__(self, det_cfg, image_size: int):
        super().__init__()
        self.size, self.resize, self.image_size = int(det_cfg.img_size), int(det_cfg.resize), int(image_size)
        self.offset = int(round((self.resize - self.size) / 2.0))  # the eval transform's centre crop
        self.sigma = float(det_cfg.maps.sigma)
        # scipy's truncation at 4 sigma, within what reflect padding allows (a kernel under twice the side)
        self.kernel = min(2 * int(4 * self.sigma + 0.5) + 1, 2 * self.size - 1)

    def forward(self, patch_scores: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(patch_scores[:, None].float(), size=(self.size, self.size), mode="bilinear",
                          align_corners=False)
        if self.sigma > 0 and self.kernel > 1:
            x = gaussian_blur(x, [self.kernel, self.kernel], [self.sigma, self.sigma])
        if self.resize != self.size:
            after = self.resize - self.size - self.offset
            x = F.pad(x, (self.offset, after, self.offset, after), mode="replicate")
        if self.resize != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x[:, 0]


@torch.no_grad()
def _tokens(model, images: np.ndarray, det_cfg, runtime: Runtime, desc: str):
    """(batch of tokens (n, h, w, D) on the device, start index) per feature batch of the eval transform."""
    transform = BatchTransform(det_cfg, runtime.device)
    model.to(runtime.device).eval()
    size = int(det_cfg.feature_batch_size)
    for start in runtime.progress(range(0, len(images), size), desc=desc):
        x = transform(torch.from_numpy(np.ascontiguousarray(images[start:start + size])))
        with runtime.autocast(det_cfg.amp):
            yield spatial_tokens(model, model.forward_features(x)).float(), start


def patch_bank(model, normal: np.ndarray, det_cfg, runtime: Runtime, seed: int) -> torch.Tensor:
    """(B, D) patch tokens of the normal images, B <= detector.maps.bank_size, on the device: every token when
    they fit, else a greedy coreset or a random subsample of them (logged)."""
    maps = det_cfg.maps
    generator = torch.Generator().manual_seed(seed)
    kept, total = [], 0
    for tokens, _ in _tokens(model, normal, det_cfg, runtime, "patch bank"):
        rows = tokens.reshape(-1, tokens.shape[-1])
        total += len(rows)
        expected = len(rows) * len(normal) / len(tokens)  # every image gives the same number of tokens
        pool = POOL_FACTOR * maps.bank_size
        if expected > pool:
            pick = torch.randperm(len(rows), generator=generator)[:max(1, round(len(rows) * pool / expected))]
            rows = rows[pick.to(rows.device)]
        kept.append(rows)
    bank = torch.cat(kept)
    pooled = len(bank)
    if pooled > maps.bank_size:
        if maps.subsample == "coreset":
            bank = bank[greedy_coreset(bank, maps.bank_size, seed)]
        else:
            bank = bank[torch.randperm(pooled, generator=generator)[:maps.bank_size].to(bank.device)]
        drawn = f" ({pooled} of them drawn at random first)" if pooled < total else ""
        log.info("maps: %d patch tokens of %d normal images%s; the bank keeps %d, a %s (detector.maps.bank_size, "
                 "detector.maps.subsample)", total, len(normal), drawn, len(bank),
                 "greedy coreset" if maps.subsample == "coreset" else "random subsample")
    if maps.k > len(bank):
        raise FitmError(f"detector.maps.k={maps.k}: expected at most {len(bank)} (the patch tokens in the bank)")
    return bank


def greedy_coreset(points: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of n points chosen by greedy k-center search (each next point the one farthest from those chosen):
    a bank that covers rare normal patches, which a random subsample of the same size misses. No host sync per step."""
    generator = torch.Generator().manual_seed(seed)
    x = points.float()
    if x.shape[1] > PROJECTION_DIM:
        projection = torch.randn(x.shape[1], PROJECTION_DIM, generator=generator) / math.sqrt(PROJECTION_DIM)
        x = x @ projection.to(x.device)
    chosen = torch.empty(n, dtype=torch.long, device=x.device)
    chosen[0] = torch.randint(len(x), (1,), generator=generator).item()
    nearest = (x - x[chosen[0]]).square().sum(1)
    for i in range(1, n):
        chosen[i] = nearest.argmax()
        nearest = torch.minimum(nearest, (x - x[chosen[i]]).square().sum(1))
    return chosen


def anomaly_maps(model, images: np.ndarray, bank: torch.Tensor, det_cfg, runtime: Runtime) -> np.ndarray:
    """(N, H, W) float32 maps of uint8 NHWC images (H = W, their side), batched on the device."""
    geometry = MapGeometry(det_cfg, images.shape[1]).to(runtime.device)
    bank = bank.to(runtime.device)
    out = np.empty(images.shape[:3], np.float32)
    for tokens, start in _tokens(model, images, det_cfg, runtime, "maps"):
        n, h, w, dim = tokens.shape
        scores = knn_scores(tokens.reshape(-1, dim), bank, det_cfg.maps.k).reshape(n, h, w)
        out[start:start + n] = geometry(scores).cpu().numpy()
    return out
