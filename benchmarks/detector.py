"""Detector throughput: fitm's batched on-device path against the authors' per-image PIL recipe.

Training images/s of one run each on the same ViT and synthetic uint8 images: fitm (uint8 on the device,
batched resize/crop/flip, bf16 on GPU, large batches) versus the authors' recipe (DataLoader over PIL
images with torchvision Resize/RandomCrop/RandomHorizontalFlip/ToTensor/Normalize per image, fp32,
batch 16). Then feature extraction images/s both ways, and kNN queries/s.

    python benchmarks/detector.py                       # GPU: ViT-B/16 at 224; CPU: a small ViT, ~2 min
    python benchmarks/detector.py --device cpu --images 256
    OMP_NUM_THREADS=1 python benchmarks/detector.py --smoke   # a tiny ViT on the CPU, in seconds: checks the script
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fitm.configs.default import get_config
from fitm.detector import create_backbone, extract_features, features, freeze, train_discriminator
from fitm.knn import knn_scores
from fitm.runtime import Runtime


class PILImages(Dataset):
    """The authors' dataset: a uint8 array served one PIL image at a time through torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def authors_transform(cfg, train: bool):
    crop = transforms.RandomCrop(cfg.img_size) if train else transforms.CenterCrop(cfg.img_size)
    steps = [transforms.Resize(cfg.resize), crop]
    steps += [transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose(steps + [transforms.ToTensor(),
                                       transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(cfg, device):
    torch.manual_seed(0)
    model = create_backbone(cfg)
    freeze(model, cfg.frozen_blocks)
    return model.to(device)


def fitm_train(cfg, normal, fakes, device) -> float:
    model = make_model(cfg, device)
    # two batches first, so the timed run pays for no kernel selection or allocator growth
    runtime = Runtime.local(device, quiet=True)
    train_discriminator(model, normal[:cfg.batch_size], fakes[:cfg.batch_size], cfg, runtime, seed=0)
    return train_discriminator(model, normal, fakes, cfg, runtime, seed=0)[0]["images_per_s"]


def authors_train(cfg, normal, fakes, device, batch_size, steps, workers) -> float:
    model = make_model(cfg, device).train()
    data = PILImages(np.concatenate([normal, fakes]), np.r_[np.zeros(len(normal)), np.ones(len(fakes))],
                     authors_transform(cfg, train=True))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
    warmup, done, start = 2, 0, 0.0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        if i == warmup + steps:
            break
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        done += len(x) if i >= warmup else 0
    sync(device)
    return done / (time.perf_counter() - start)


def fitm_features(cfg, images, device) -> float:
    model = make_model(cfg, device)
    runtime = Runtime.local(device, quiet=True)
    extract_features(model, images[:cfg.feature_batch_size], cfg, runtime)
    sync(device)
    start = time.perf_counter()
    extract_features(model, images, cfg, runtime)
    sync(device)
    return len(images) / (time.perf_counter() - start)


@torch.no_grad()
def authors_features(cfg, images, device, batch_size, steps, workers) -> float:
    model = make_model(cfg, device).eval()
    data = PILImages(images, np.zeros(len(images)), authors_transform(cfg, train=False))
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers)
    done, start = 0, 0.0
    for i, (x, _) in enumerate(loader):
        if i == 1:
            sync(device)
            start = time.perf_counter()
        if i == 1 + steps:
            break
        out = features(model, x.to(device)).cpu()
        done += len(out) if i >= 1 else 0
    sync(device)
    return done / (time.perf_counter() - start)


def knn_rate(bank_size, queries, dim, device) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    bank = torch.randn(bank_size, dim, device=device, generator=g)
    q = torch.randn(queries, dim, device=device, generator=g)
    knn_scores(q[:64], bank)
    sync(device)
    start = time.perf_counter()
    knn_scores(q, bank)
    sync(device)
    return queries / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default=None, help="timm ViT (default: vit_base_patch16_224 on GPU, "
                                                         "vit_tiny_patch16_224 on CPU)")
    parser.add_argument("--img-size", type=int, default=None, help="default 224 on GPU, 64 on CPU")
    parser.add_argument("--resize", type=int, default=None, help="default img_size * 8/7")
    parser.add_argument("--source-size", type=int, default=32, help="side of the stored synthetic images")
    parser.add_argument("--images", type=int, default=None, help="training images, half normal, half fake")
    parser.add_argument("--batch-size", type=int, default=128, help="fitm's training batch")
    parser.add_argument("--ref-batch-size", type=int, default=16, help="the authors' batch")
    parser.add_argument("--ref-steps", type=int, default=None, help="timed steps of the authors' recipe")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the authors' recipe (theirs: 0)")
    parser.add_argument("--knn-bank", type=int, default=None, help="default 50000 on GPU, 5000 on CPU")
    parser.add_argument("--knn-queries", type=int, default=None, help="default 10000 on GPU, 1000 on CPU")
    parser.add_argument("--knn-dim", type=int, default=768, help="feature size (ViT-B/16: 768)")
    parser.add_argument("--smoke", action="store_true", help="a 2-block ViT on the CPU and a few images: checks the "
                                                             "script, not speed")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.img_size, args.images, args.batch_size = "cpu", 32, 64, 16
        args.ref_steps, args.knn_bank, args.knn_queries, args.knn_dim = 2, 256, 64, 64

    logging.getLogger("fitm").setLevel(logging.ERROR)  # the random-weights warning is expected here
    device = Runtime.local(args.device).device
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = gpu
    cfg = get_config().detector
    cfg.pretrained, cfg.needs_pretrained = "none", False
    cfg.backbone = args.backbone or ("vit_base_patch16_224" if gpu else "vit_tiny_patch16_224")
    if args.smoke:
        cfg.arch.update(patch_size=8, depth=2, embed_dim=64, num_heads=2)
        cfg.frozen_blocks = 1
    cfg.img_size = args.img_size or (224 if gpu else 64)
    cfg.resize = args.resize or round(cfg.img_size * 8 / 7)
    cfg.batch_size = args.batch_size
    cfg.feature_batch_size = 256 if gpu else 64
    cfg.epochs = 1
    n = args.images or (4096 if gpu else 512)
    ref_steps = args.ref_steps or (100 if gpu else 20)

    rng = np.random.default_rng(0)
    size = args.source_size
    normal = rng.integers(0, 256, (n // 2, size, size, 3), dtype=np.uint8)
    fakes = rng.integers(0, 256, (n - n // 2, size, size, 3), dtype=np.uint8)
    name = f"{cfg.backbone} @ {cfg.img_size}px (resize {cfg.resize}) on {device}"
    print(f"{name}; {n} synthetic {size}x{size} images")

    ours = fitm_train(cfg, normal, fakes, device)
    theirs = authors_train(cfg, normal, fakes, device, args.ref_batch_size, ref_steps, args.workers)
    print(f"train    fitm  {ours:9.1f} images/s  (batch {cfg.batch_size}, {'bf16' if gpu else 'fp32'})")
    print(f"train    authors {theirs:7.1f} images/s  (batch {args.ref_batch_size}, fp32, PIL per image, "
          f"{args.workers} workers)")
    print(f"train    ratio {ours / theirs:9.2f}x")

    images = np.concatenate([normal, fakes])
    ours = fitm_features(cfg, images, device)
    theirs = authors_features(cfg, images, device, args.ref_batch_size, ref_steps, args.workers)
    print(f"features fitm  {ours:9.1f} images/s  (batch {cfg.feature_batch_size})")
    print(f"features authors {theirs:7.1f} images/s  (batch {args.ref_batch_size}, fp32)")
    print(f"features ratio {ours / theirs:8.2f}x")

    bank = args.knn_bank or (50000 if gpu else 5000)
    queries = args.knn_queries or (10000 if gpu else 1000)
    rate = knn_rate(bank, queries, args.knn_dim, device)
    print(f"kNN      {rate:9.1f} queries/s  ({queries} queries x {bank} bank, D={args.knn_dim}, k=2)")


if __name__ == "__main__":
    main()
