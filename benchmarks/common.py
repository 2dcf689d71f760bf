"""What the benchmark scripts share: where the shared CIFAR-10 copy lives, and its unpacked tree."""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

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


def synthetic_cifar_tree(root: Path, train: int = 24, test: int = 6, size: int = 16, seed: int = 0) -> Path:
    """A CIFAR-10-shaped JPEG tree of random images (every class, `train` and `test` per class) for --smoke runs:
    the benchmarks' code paths in seconds, nothing measured."""
    import numpy as np
    from PIL import Image

    from fitm.data.cifar import CIFAR10_CLASSES

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for k, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, (1, 1, 3))  # a colour per class, so classes differ
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=95)
    return root
