"""Any images on disk: <root>/train/<class>/ holds the normal training images, <root>/test/<class>/ the
normal test images, and every other folder under <root>/test/ anomalous ones; <root>/masks/<folder>/<name>.png, when
<root>/masks/ exists, the ground-truth mask of each anomalous test image <root>/test/<folder>/<name>.*. MVTec AD
categories and the CIFAR-10 JPEG tree have this layout, so their adapters read through here too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fitm.data import Split
from fitm.data.images import list_images, read_images
from fitm.data.masks import read_masks
from fitm.errors import FitmError


def subfolders(folder: Path) -> list[str]:
    """Names of the visible folders inside `folder`, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def train_classes(root: str) -> list[str]:
    if not root:
        raise FitmError("--data-root DIR: the folder dataset needs a root holding train/<class>/ and test/")
    train = Path(root) / "train"
    if not train.is_dir() or not (names := subfolders(train)):
        raise FitmError(f"--data-root {root}: no class folders under {train} (expected {train}/<class>/*.png)")
    return names


def load_split(data_cfg, class_name: str) -> Split:
    root = Path(data_cfg.root)
    split = read_image_tree(root, class_name, data_cfg.image_size)
    if (root / "masks").is_dir():
        split.test_masks = read_masks(root / "masks", "", split.test_paths, split.test_labels, split.test_groups,
                                      data_cfg.image_size)
    return split


def read_image_tree(root: Path, normal: str, size: int, class_name: str | None = None) -> Split:
    """The Split of an image tree whose normal folders are train/<normal> and test/<normal>."""
    test = root / "test"
    groups = subfolders(test) if test.is_dir() else []
    if normal not in groups:
        raise FitmError(f"{test / normal}: no such folder (expected the normal test images there)")
    if len(groups) == 1:
        raise FitmError(f"{test}: only the normal folder {normal}/ is there (expected anomalous folders beside it)")
    per_group = [list_images(test / g) for g in groups]
    counts = [len(paths) for paths in per_group]
    test_paths = [p for paths in per_group for p in paths]
    test_groups = np.repeat(np.array(groups), counts)
    return Split(
        normal_train=read_images(list_images(root / "train" / normal), size),
        test_images=read_images(test_paths, size),
        test_labels=(test_groups != normal).astype(np.int64),
        test_groups=test_groups,
        test_paths=np.array([str(p) for p in test_paths]),
        class_name=class_name or normal,
    )
