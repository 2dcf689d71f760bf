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
