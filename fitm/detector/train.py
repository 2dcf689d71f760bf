"""Fine-tune the backbone to tell normal (0) from fake (1), and extract its pre-logits features.

Under torchrun each rank trains on its share of every global batch (detector.batch_size stays the global
batch): all ranks draw the same shuffle and the same crops and flips, so n ranks follow the one-process run.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from fitm.detector.backbone import features
from fitm.detector.transforms import BatchTransform
from fitm.errors import FitmError
from fitm.io import save_csv
from fitm.runtime import Runtime, compiled, log

# Below this balanced accuracy (the mean of the accuracies on normals and on fakes) in the last epoch the detector has
# learned next to nothing from the fakes. Balanced, because a detector that answers "fake" for everything scores
# the fakes' share in plain accuracy (0.98 with 50 normals and 2,500 fakes) and 0.5 here.
NEAR_CHANCE = 0.6


def _images(array: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        shape = getattr(array, "shape", None)
        dtype = getattr(array, "dtype", type(array).__name__)
        raise FitmError(f"{name}: expected uint8 NHWC images with 3 channels, got {dtype} {shape}")
    if len(array) == 0:
        raise FitmError(f"{name}: no images")
    return array


def epochs_for(det_cfg, n_images: int) -> int:
    """detector.epochs, raised so that training takes at least detector.min_steps SGD steps: a set of 50
    normal images gets as many updates as the recipe's schedule needs, not a few dozen."""
    steps_per_epoch = math.ceil(n_images / det_cfg.batch_size)
    return max(det_cfg.epochs, math.ceil(det_cfg.min_steps / steps_per_epoch))


def linear_probe(model, normal: np.ndarray, fakes: np.ndarray, det_cfg, runtime: Runtime) -> float:
    """Set the 2-way head to the logistic regression of fake vs normal on the backbone's features (eval transform),
    classes weighted equally; returns the probe's balanced accuracy on those features.

    Linear probing before fine-tuning (Kumar et al., ICLR 2022): from a random head the first SGD steps push
    the backbone along the head's random directions; from a fitted head they move it towards the task. Every
    rank fits the same probe on the same gathered features."""
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or head.out_features != 2:
        raise FitmError(f"detector.linear_probe: needs a backbone whose classifier is one Linear layer, "
                        f"{det_cfg.backbone}'s is {type(head).__name__}")
    x = torch.cat([extract_features(model, normal, det_cfg, runtime),
                   extract_features(model, fakes, det_cfg, runtime)]).cpu().numpy()
    y = np.r_[np.zeros(len(normal)), np.ones(len(fakes))]
    probe = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x, y)
    # softmax over (-z/2, z/2) is the probe's sigmoid(z) for "fake"
    w = torch.as_tensor(probe.coef_[0], dtype=head.weight.dtype)
    b = torch.as_tensor(probe.intercept_, dtype=head.bias.dtype)
    with torch.no_grad():
        head.weight.copy_(torch.stack([-w, w]) / 2)
        head.bias.copy_(torch.cat([-b, b]) / 2)
    balanced = float(balanced_accuracy_score(y, probe.predict(x)))
    log.info("detector: linear probe on the frozen features, balanced accuracy %.3f on normal vs fake", balanced)
    return balanced


def train_discriminator(model, normal: np.ndarray, fakes: np.ndarray, det_cfg, runtime: Runtime, seed: int,
                        log_path=None) -> list[dict]:
    """SGD with cross-entropy on normal=0 / fake=1; one row per epoch (epoch, loss, accuracy, balanced_accuracy,
    images_per_s), rewritten to log_path as CSV after each epoch (by the main process).

    Both sets go to the device once as uint8. Normals and fakes may differ in size, so every batch is
    drawn normals-first from one seeded shuffle and each part goes through the transform on its own;
    the split points are known on the host, so batching never waits on the device. A non-finite loss stops
    training with a FitmError before anything is saved.
    """
    normal, fakes = _images(normal, "normal images"), _images(fakes, "fakes")
    device = runtime.device
    runtime.per_rank(det_cfg.batch_size, "detector.batch_size")
    n_normal, total = len(normal), len(normal) + len(fakes)
    normal_t = torch.from_numpy(np.ascontiguousarray(normal)).to(device)
    fakes_t = torch.from_numpy(np.ascontiguousarray(fakes)).to(device)
    transform = BatchTransform(det_cfg, device, seed=seed + 1)
    shuffle = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=det_cfg.lr, momentum=det_cfg.momentum, weight_decay=det_cfg.weight_decay)
    batch = int(det_cfg.batch_size)
    epochs = epochs_for(det_cfg, total)
    model.to(device).train()
    forward = compiled(runtime.data_parallel(model), det_cfg.compile)
    runtime.seed_rank_stream(seed)

    rows = []
    bar = runtime.progress(total=epochs * math.ceil(total / batch), desc="detector")
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(total, generator=shuffle).split(batch)
        order = [chunk.sort().values for chunk in order]  # normals (index < n_normal) first in each batch
        n_normals = [int((chunk < n_normal).sum()) for chunk in order]
        order_dev = torch.cat(order).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros(2, device=device)  # normals, fakes
        offset = 0
        for chunk, k in zip(order, n_normals):
            idx = order_dev[offset:offset + len(chunk)]
            offset += len(chunk)
            x, y, weight = _share_of_batch(idx, k, n_normal, normal_t, fakes_t, transform, runtime)
            with runtime.autocast(det_cfg.amp):
                logits = forward(x)
            losses = F.cross_entropy(logits.float(), y, reduction="none") * weight
            # DDP averages gradients over ranks: scaled so that the average is the global batch's mean.
            loss = losses.sum() * runtime.world_size / len(chunk)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += losses.detach().sum()
            correct.index_add_(0, y, (logits.argmax(1) == y).float() * weight)
            bar.update()
        loss_mean = runtime.mean(loss_sum).item() * runtime.world_size / total  # waits: the clock is honest
        right = (runtime.mean(correct) * runtime.world_size).tolist()
        accuracy = sum(right) / total
        on_normals, on_fakes = right[0] / n_normal, right[1] / len(fakes)
        if not math.isfinite(loss_mean):
            raise FitmError(f"detector: the training loss became non-finite in epoch {epoch + 1} (try a lower "
                            f"detector.lr, now {det_cfg.lr}); the previous detector, if any, is kept")
        row = {"epoch": epoch + 1, "loss": loss_mean, "accuracy": accuracy,
               "balanced_accuracy": (on_normals + on_fakes) / 2, "images_per_s": total / (time.perf_counter() - start)}
        rows.append(row)
        bar.set_postfix(epoch=row["epoch"], loss=f"{row['loss']:.4f}", acc=f"{row['balanced_accuracy']:.3f}")
        log.info("detector epoch %d/%d: loss %.4f, accuracy %.3f (balanced %.3f), %.0f images/s", row["epoch"],
                 epochs, row["loss"], row["accuracy"], row["balanced_accuracy"], row["images_per_s"])
        if log_path is not None and runtime.is_main:
            save_csv(rows, log_path)
    bar.close()
    if rows[-1]["balanced_accuracy"] < NEAR_CHANCE:
        log.warning("detector: balanced accuracy %.3f on normal vs fake in its last epoch (%.3f on normals, %.3f on "
                    "fakes), near chance: it learned little from these fakes (raise detector.min_steps or "
                    "detector.lr, or check fakes.png)", rows[-1]["balanced_accuracy"], on_normals, on_fakes)
    return rows


def _share_of_batch(idx, k, n_normal, normal_t, fakes_t, transform, runtime: Runtime):
    """This rank's rows of a global batch (k normals first, then fakes): images, labels, loss weights.

    Every rank transforms with the whole batch's random draws, so the crops do not depend on the world size.
    A rank whose share is empty (a last batch smaller than the world) takes one row at weight 0, so that
    every rank still runs the same forward and backward."""
    n = len(idx)
    rows = runtime.share(n)
    weight = 1.0
    if rows.start == rows.stop:
        rows, weight = slice(0, 1), 0.0
    parts = []
    if k:
        parts.append(transform(normal_t[idx[:k]], train=True, rows=slice(min(rows.start, k), min(rows.stop, k))))
    if k < n:
        fake_rows = slice(max(rows.start - k, 0), max(rows.stop - k, 0))
        parts.append(transform(fakes_t[idx[k:] - n_normal], train=True, rows=fake_rows))
    x = torch.cat(parts) if len(parts) > 1 else parts[0]
    y = (torch.arange(rows.start, rows.stop, device=x.device) >= k).long()
    return x, y, torch.full((len(y),), weight, device=x.device)


@torch.no_grad()
def extract_features(model, images: np.ndarray, det_cfg, runtime: Runtime) -> torch.Tensor:
    """(N, D) float32 pre-logits features on the device, from the eval transform (resize, centre crop); under
    torchrun each rank extracts its share and every rank gets them all, in order."""
    images = _images(images, "images")
    transform = BatchTransform(det_cfg, runtime.device)
    model.to(runtime.device).eval()
    forward = compiled(functools.partial(features, model), det_cfg.compile)
    size = int(det_cfg.feature_batch_size)
    mine = images[runtime.share(len(images))]
    out = []
    for start in runtime.progress(range(0, len(mine), size), desc="features"):
        x = transform(torch.from_numpy(np.ascontiguousarray(mine[start:start + size])))
        with runtime.autocast(det_cfg.amp):
            out.append(forward(x).float())
    dim = out[0].shape[1] if out else _feature_dim(model, transform, det_cfg, runtime)
    local = torch.cat(out) if out else torch.empty(0, dim, device=runtime.device)
    return runtime.gather_rows(local, len(images))


def _feature_dim(model, transform, det_cfg, runtime) -> int:
    """The feature size, for a rank that got no images to extract (more ranks than images)."""
    probe = torch.zeros((1, det_cfg.img_size, det_cfg.img_size, 3), dtype=torch.uint8)
    return features(model, transform(probe)).shape[1]
