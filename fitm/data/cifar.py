"""CIFAR-10 and CIFAR-100 (20 coarse superclasses) through torchvision; CIFAR-10 also from a JPEG
image tree (<root>/train/<class>/*.jpg, <root>/test/<class>/*.jpg), read as a folder dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torchvision

from fitm.data import Split
from fitm.data.folder import read_image_tree
from fitm.data.images import resize_images
from fitm.errors import FitmError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

# The coarse superclass of each of the 100 fine labels (fine labels in their alphabetical order):
# torchvision keeps only the fine labels of the CIFAR-100 files.
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


def load_cifar10(data_cfg, class_name: str) -> Split:
    if data_cfg.root and (Path(data_cfg.root) / "train" / CIFAR10_CLASSES[0]).is_dir():
        return read_image_tree(Path(data_cfg.root), class_name, data_cfg.image_size)
    train = _open(torchvision.datasets.CIFAR10, "CIFAR-10", data_cfg.root, data_cfg.download, train=True)
    test = _open(torchvision.datasets.CIFAR10, "CIFAR-10", data_cfg.root, False, train=False)
    return Split.one_vs_all(train.data, train.targets, test.data, test.targets, CIFAR10_CLASSES, class_name,
                            data_cfg.image_size)


def load_cifar100(data_cfg, class_name: str) -> Split:
    train = _open(torchvision.datasets.CIFAR100, "CIFAR-100", data_cfg.root, data_cfg.download, train=True)
    test = _open(torchvision.datasets.CIFAR100, "CIFAR-100", data_cfg.root, False, train=False)
    coarse = np.array(CIFAR100_FINE_TO_COARSE)
    return Split.one_vs_all(train.data, coarse[train.targets], test.data, coarse[test.targets],
                            CIFAR100_COARSE_CLASSES, class_name, data_cfg.image_size)


def cifar100_fine_test(root: str, download: bool, image_size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The CIFAR-100 test set with its 100 fine labels: the near-distribution (NND) anomalies that
    CIFAR-10 classes are evaluated against, one fine class at a time."""
    test = _open(torchvision.datasets.CIFAR100, "CIFAR-100", root, download, train=False)
    return resize_images(test.data, image_size), np.asarray(test.targets, np.int64), list(test.classes)


def _open(dataset, title: str, root: str, download: bool, train: bool):
    if not root:
        raise FitmError(f"--data-root DIR: {title} needs a data root (expected DIR/{dataset.base_folder}/; "
                        "pass --download when online)")
    if not download and not (Path(root) / dataset.base_folder).is_dir():
        raise FitmError(f"--data-root {root}: no {title} found there (expected {dataset.base_folder}/); "
                        "pass --download when online")
    if download and not (Path(root) / dataset.base_folder).is_dir() and not _writable(Path(root)):
        raise FitmError(f"--data-root {root}: not writable, and --download saves {title} there (expected a writable "
                        f"folder, or {dataset.base_folder}/ already in it)")
    try:
        return dataset(root, train=train, download=download)
    except (RuntimeError, OSError) as e:
        raise FitmError(f"--data-root {root}: could not read {title} from {dataset.base_folder}/ ({e})") from e


def _writable(folder: Path) -> bool:
    """Whether files can be made in `folder`, or in the nearest folder above it that exists (download makes it)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)  # False on a read-only file system, for root too
