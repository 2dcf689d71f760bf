"""Fine-tune the ViT to tell normal (0) from fake (1), and extract its pre-logits features."""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from fitm.detector.backbone import features
from fitm.detector.transforms import BatchTransform
from fitm.errors import FitmError
from fitm.io import save_csv
from fitm.runtime import autocast, compiled, log, progress


def _images(array: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        shape = getattr(array, "shape", None)
        dtype = getattr(array, "dtype", type(array).__name__)
        raise FitmError(f"{name}: expected uint8 NHWC images with 3 channels, got {dtype} {shape}")
    if len(array) == 0:
        raise FitmError(f"{name}: no images")
    return array


def train_discriminator(model, normal: np.ndarray, fakes: np.ndarray, det_cfg, device, seed: int,
                        log_path=None) -> list[dict]:
    """SGD with cross-entropy on normal=0 / fake=1; one row per epoch (epoch, loss, accuracy, images_per_s),
    rewritten to log_path as CSV after each epoch.

    Both sets go to the device once as uint8. Normals and fakes may differ in size, so every batch is
    drawn normals-first from one seeded shuffle and each part goes through the transform on its own;
    the split points are known on the host, so batching never waits on the device.
    """
    normal, fakes = _images(normal, "normal images"), _images(fakes, "fakes")
    device = torch.device(device)
    n_normal, total = len(normal), len(normal) + len(fakes)
    normal_t = torch.from_numpy(np.ascontiguousarray(normal)).to(device)
    fakes_t = torch.from_numpy(np.ascontiguousarray(fakes)).to(device)
    transform = BatchTransform(det_cfg, device, seed=seed + 1)
    shuffle = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=det_cfg.lr, momentum=det_cfg.momentum, weight_decay=det_cfg.weight_decay)
    batch = int(det_cfg.batch_size)
    steps = -(-total // batch)
    model.to(device).train()
    forward = compiled(model, det_cfg.compile)

    rows = []
    bar = progress(total=det_cfg.epochs * steps, desc="detector")
    for epoch in range(det_cfg.epochs):
        start = time.perf_counter()
        order = torch.randperm(total, generator=shuffle).split(batch)
        order = [chunk.sort().values for chunk in order]  # normals (index < n_normal) first in each batch
        n_normals = [int((chunk < n_normal).sum()) for chunk in order]
        order_dev = torch.cat(order).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for i, (chunk, k) in enumerate(zip(order, n_normals)):
            idx = order_dev[i * batch:i * batch + len(chunk)]
            parts = []
            if k:
                parts.append(transform(normal_t[idx[:k]], train=True))
            if k < len(chunk):
                parts.append(transform(fakes_t[idx[k:] - n_normal], train=True))
            x = torch.cat(parts) if len(parts) > 1 else parts[0]
            y = (torch.arange(len(chunk), device=device) >= k).long()
            with autocast(device, det_cfg.amp):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(chunk)
            correct += (logits.argmax(1) == y).sum()
            bar.update()
        loss_mean = loss_sum.item() / total  # waits for the device, so the clock below is honest
        row = {"epoch": epoch + 1, "loss": loss_mean, "accuracy": correct.item() / total,
               "images_per_s": total / (time.perf_counter() - start)}
        rows.append(row)
        bar.set_postfix(epoch=row["epoch"], loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}")
        log.info("detector epoch %d/%d: loss %.4f, accuracy %.3f, %.0f images/s", row["epoch"], det_cfg.epochs,
                 row["loss"], row["accuracy"], row["images_per_s"])
        if log_path is not None:
            save_csv(rows, log_path)
    bar.close()
    return rows


@torch.no_grad()
def extract_features(model, images: np.ndarray, det_cfg, device) -> torch.Tensor:
    """(N, D) float32 pre-logits features on `device`, from the eval transform (resize, centre crop)."""
    images = _images(images, "images")
    device = torch.device(device)
    transform = BatchTransform(det_cfg, device)
    model.to(device).eval()
    forward = compiled(functools.partial(features, model), det_cfg.compile)
    size = int(det_cfg.feature_batch_size)
    out = []
    for start in progress(range(0, len(images), size), desc="features"):
        x = transform(torch.from_numpy(np.ascontiguousarray(images[start:start + size])))
        with autocast(device, det_cfg.amp):
            out.append(forward(x).float())
    return torch.cat(out)
