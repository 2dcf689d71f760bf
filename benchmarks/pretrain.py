"""A stand-in for ImageNet pretraining that a CPU can make: the CPU configs' small ViT trained supervised on
CIFAR-10 classes 5-9 (dog, frog, horse, ship, truck) of the shared data. The weights file it writes is what
`--pretrained PATH` loads through fitm's own loading path, so the pretrained regime of the paper (fine-tune a
backbone that already knows images against near fakes) can be measured on classes 0-4, which it never saw.

    OMP_NUM_THREADS=1 python benchmarks/pretrain.py                     # ~5-9 minutes on one core
    OMP_NUM_THREADS=1 python benchmarks/pretrain.py --epochs 1 --out runs/pretrained/quick.pth
    OMP_NUM_THREADS=1 python benchmarks/pretrain.py --smoke   # the same code on tiny synthetic data, in seconds

Recipe: AdamW (lr 2e-3, one-cycle, weight decay 0.05), the detector's own training transform (resize to
detector.resize, random crop to detector.img_size, horizontal flip, ImageNet mean/std), batch 128, 6 epochs (20 epochs with label
smoothing 0.1 transferred worse: BENCHMARKS.md). At the end it prints each of classes 0-4's one-class kNN AUROC (k = 2, anomalies: the other
classes of 0-4), the figure fine-tuning has to beat. The weights depend on the CPU thread count and on the machine's
kernels (sums in another order), so build it with OMP_NUM_THREADS=1, as above, and compare the weights' sha256 it
prints with BENCHMARKS.md's ("The pretrained stand-in") before comparing against rows measured on another file.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fitm.config import apply_overrides, load_config
from fitm.data import read_images
from fitm.data.cifar import CIFAR10_CLASSES
from fitm.data.images import list_images
from fitm.detector.backbone import create_architecture
from fitm.detector.evaluate import metrics
from fitm.knn import knn_scores
from fitm.detector.train import extract_features
from fitm.detector.transforms import BatchTransform
from fitm.io import atomic_path
from fitm.runtime import Runtime, seed_everything

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import SHARED_DATA, cifar_tree, synthetic_cifar_tree  # noqa: E402

PRETRAIN_CLASSES = (5, 6, 7, 8, 9)
EVAL_CLASSES = (0, 1, 2, 3, 4)
BATCH, LR = 128, 2e-3  # the recipe's batch and peak learning rate


def read_classes(root: Path, split: str, classes, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, k in enumerate(classes):
        paths = list_images(root / split / CIFAR10_CLASSES[k])
        images.append(read_images(paths, size))
        labels.append(np.full(len(paths), label))
    return np.concatenate(images), np.concatenate(labels)


def pretrain(model, images, labels, det_cfg, epochs: int, batch: int, lr: float, seed: int,
             device: torch.device = torch.device("cpu")) -> None:
    """Supervised training on `device`: the images go there once as uint8, batches are transformed there, and the
    device is waited on once an epoch (for its loss and accuracy)."""
    seed_everything(seed)
    transform = BatchTransform(det_cfg, device, seed=seed)
    data, targets = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    steps = epochs * (len(data) // batch)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        start = time.perf_counter()
        correct = torch.zeros((), dtype=torch.int64, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        order = torch.randperm(len(data), generator=shuffle)[: (len(data) // batch) * batch].view(-1, batch)
        for idx in order.to(device):
            logits = model(transform(data[idx], train=True))
            loss = F.cross_entropy(logits, targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == targets[idx]).sum()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss_sum.item() / len(order):.3f}, "
              f"train accuracy {correct.item() / order.numel():.3f}, {time.perf_counter() - start:.0f} s", flush=True)


def stand_in(det_cfg, images, labels, epochs: int, batch: int = BATCH, lr: float = LR, seed: int = 0,
             device: torch.device = torch.device("cpu")) -> torch.nn.Module:
    """The detector's architecture with a head for the pretraining classes, trained on their `images`."""
    seed_everything(seed)
    model = create_architecture(det_cfg)
    model.reset_classifier(len(PRETRAIN_CLASSES))
    pretrain(model, images, labels, det_cfg, epochs, batch, lr, seed, device)
    return model


def knn_aurocs(model, root: Path, det_cfg, size: int, runtime: Runtime) -> list[float]:
    """One-class kNN AUROC of each evaluation class against the other evaluation classes' test images."""
    model.eval()
    train, train_labels = read_classes(root, "train", EVAL_CLASSES, size)
    test, test_labels = read_classes(root, "test", EVAL_CLASSES, size)
    train_f = extract_features(model, train, det_cfg, runtime)
    test_f = extract_features(model, test, det_cfg, runtime)
    aurocs = []
    for label in range(len(EVAL_CLASSES)):
        scores = knn_scores(test_f, train_f[torch.from_numpy(train_labels == label)], det_cfg.k)
        aurocs.append(metrics(scores, (test_labels != label).astype(np.int64))["auroc"])
    return aurocs


def weights_digest(state_dict) -> str:
    """The first 16 hex digits of a sha256 over the tensors in key order: names one set of weights, whatever file
    holds them (torch.save's bytes also depend on the file's name)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="cifar10-jpeg.tar.gz or its unpacked tree")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.py"),
                        help="the config whose detector.* architecture is pretrained")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "pretrained" / "vit_c10_5to9.pth")
    parser.add_argument("--smoke", action="store_true", help="one epoch on tiny synthetic data, written to a "
                                                             "temporary folder: checks the script, measures nothing")
    args = parser.parse_args()
    if not args.smoke:
        return measure(args)
    with tempfile.TemporaryDirectory() as tmp:
        args.data, args.out = synthetic_cifar_tree(Path(tmp) / "data"), Path(tmp) / "stand-in.pth"
        args.epochs, args.batch_size, args.quiet = 1, 16, True
        measure(args)


def measure(args) -> None:

    runtime = Runtime.local("cpu", quiet=args.quiet)
    config = apply_overrides(load_config(path=args.config), args.overrides)
    det, size = config.detector, config.data.image_size
    root = cifar_tree(args.data)
    images, labels = read_classes(root, "train", PRETRAIN_CLASSES, size)
    print(f"pretraining {det.backbone} ({det.arch.to_dict()}) at {det.img_size} px on {len(images)} images of "
          f"{', '.join(CIFAR10_CLASSES[k] for k in PRETRAIN_CLASSES)}", flush=True)
    start = time.perf_counter()
    model = stand_in(det, images, labels, args.epochs, args.batch_size, args.lr, args.seed)
    minutes = (time.perf_counter() - start) / 60
    with atomic_path(args.out) as tmp:
        torch.save(model.state_dict(), tmp)
    aurocs = knn_aurocs(model, root, det, size, runtime)
    print(f"wrote {args.out} (weights sha256 {weights_digest(model.state_dict())}) after {minutes:.1f} minutes of "
          f"training on {torch.get_num_threads()} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("kNN AUROC (k = 2) without fine-tuning, classes 0-4 vs the rest of 0-4: "
          + " / ".join(f"{100 * a:.1f}" for a in aurocs) + f", mean {100 * np.mean(aurocs):.1f}")


if __name__ == "__main__":
    main()
