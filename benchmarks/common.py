"""What the benchmark scripts share: where the shared CIFAR-10 copy lives, its unpacked tree, and the tiny data and
short schedule of every script's --smoke mode."""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cifar_tree(path: Path) -> Path:
    """The image-folder tree; a .tar.gz is unpacked once beside the system's temporary files."""
    if path.is_dir():
        return path
    if not path.is_file():
        sys.exit(f"the CIFAR-10 data is not here: {path} is absent. This benchmark needs the shared "
                 "CIFAR-10 JPEG copy (shared/data/cifar10-jpeg.tar.gz) or an unpacked train/<class>/ tree; "
                 "pass --data PATH. Nothing was measured.")
    root = Path(tempfile.gettempdir()) / "fitm-cifar10-jpeg"
    if not (root / "train").is_dir():
        print(f"unpacking {path} to {root} ...", flush=True)
        with tarfile.open(path) as tar:
            tar.extractall(root.with_suffix(".partial"), filter="data")
        inner = next(p.parent for p in root.with_suffix(".partial").rglob("train") if p.is_dir())
        inner.rename(root)
    return root


# --smoke: a few steps of everything, so each script's own code path runs in seconds on one core.
SMOKE_OVERRIDES = ["training.n_iters=6", "training.snapshot_iters=(3,6)", "training.warmup=2",
                   "training.batch_size=16", "training.log_every=2", "sampling.steps=3", "fakes.checkpoint=last",
                   "detector.epochs=1", "detector.min_steps=0"]


def synthetic_cifar_tree(root: Path, train: int = 24, test: int = 8, size: int = 16, classes: int = 10) -> Path:
    """A CIFAR-10-shaped JPEG tree (train/<class>/*.jpg, test/<class>/*.jpg) of its first `classes` classes: each
    class a colour of its own under noise, so the scripts have something to tell apart without the shared data."""
    from PIL import Image

    from fitm.data.cifar import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    for k, name in enumerate(CIFAR10_CLASSES[:classes]):
        colour = np.array([(37 * k) % 256, (91 * k + 60) % 256, (173 * k + 120) % 256])
        for split, count in (("train", train), ("test", test)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg")
    return root
