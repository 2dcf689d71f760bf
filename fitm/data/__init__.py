"""Dataset adapters: each gives the normal class's training images and the labelled test set as uint8
NHWC arrays (3 channels), the format every stage reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from fitm.data.fakes import load_fakes, slice_class, validate_images
from fitm.data.images import is_grayscale, list_images, read_images, resize_images
from fitm.errors import FitmError


@dataclass
class Split:
    """One normal class's data. Test labels: 0 normal, 1 anomalous; test_groups names the source class
    or defect of each test image; test_paths is set only where images came from files; test_masks (N, H, W) uint8,
    1 on anomalous pixels, only where the dataset has ground-truth masks (all zero on normal images)."""

    normal_train: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_groups: np.ndarray
    test_paths: np.ndarray | None
    class_name: str
    test_masks: np.ndarray | None = None

    @classmethod
    def one_vs_all(cls, train_images: np.ndarray, train_targets, test_images: np.ndarray, test_targets,
                   names: Sequence[str], normal: str, size: int) -> "Split":
        """The split of a labelled in-memory dataset: the normal class's training images against the
        whole test set, resized to size x size, C-contiguous (torchvision's CIFAR arrays are strided views)."""
        k = list(names).index(normal)
        train_targets, test_targets = np.asarray(train_targets), np.asarray(test_targets)
        return cls(
            normal_train=np.ascontiguousarray(resize_images(train_images[train_targets == k], size)),
            test_images=np.ascontiguousarray(resize_images(test_images, size)),
            test_labels=(test_targets != k).astype(np.int64),
            test_groups=np.array(names)[test_targets],
            test_paths=None,
            class_name=normal,
        )


# Adapters import Split from this module, so they come after it.
from fitm.data import cifar, digits, folder, mvtec  # noqa: E402
from fitm.data.cifar import cifar100_fine_test  # noqa: E402


@dataclass(frozen=True)
class _Adapter:
    noun: str  # what a class is called in messages
    valid: Callable[[str], list[str]]  # root -> names --class accepts; an index counts in this list
    listed: Callable[[str], list[str]]  # root -> the classes that `--class all` runs
    load: Callable[..., Split]  # (data_cfg, canonical class) -> Split


def _fixed(names: Sequence[str]) -> Callable[[str], list[str]]:
    return lambda root: list(names)


_ADAPTERS = {
    "digits": _Adapter("a digits class", _fixed(digits.CLASSES), _fixed(digits.CLASSES), digits.load_split),
    "cifar10": _Adapter("a CIFAR-10 class", _fixed(cifar.CIFAR10_CLASSES), _fixed(cifar.CIFAR10_CLASSES),
                        cifar.load_cifar10),
    "cifar100": _Adapter("a CIFAR-100 superclass", _fixed(cifar.CIFAR100_COARSE_CLASSES),
                         _fixed(cifar.CIFAR100_COARSE_CLASSES), cifar.load_cifar100),
    "mvtec": _Adapter("an MVTec AD category", mvtec.valid_categories,
                      lambda root: mvtec.categories_present(root) or list(mvtec.CATEGORIES), mvtec.load_split),
    "folder": _Adapter("a class folder under {root}/train", folder.train_classes, folder.train_classes,
                       folder.load_split),
}


def _adapter(data_cfg) -> _Adapter:
    if data_cfg.name not in _ADAPTERS:
        raise FitmError(f"data.name: unknown dataset {data_cfg.name!r} (expected one of {', '.join(_ADAPTERS)})")
    return _ADAPTERS[data_cfg.name]


def class_names(data_cfg) -> list[str]:
    """The dataset's canonical class names: what `--class all` runs over."""
    return _adapter(data_cfg).listed(data_cfg.root)


def canonical_class(data_cfg) -> str:
    """The canonical name of data_cfg.normal_class, given as a name (any case) or an index; an empty
    class means the dataset's only class."""
    adapter = _adapter(data_cfg)
    names = adapter.valid(data_cfg.root)
    raw = str(data_cfg.normal_class).strip()
    by_lower = {name.lower(): name for name in names}
    if raw.lower() in by_lower:
        return by_lower[raw.lower()]
    if raw.isdigit() and int(raw) < len(names):
        return names[int(raw)]
    if not raw and len(names) == 1:
        return names[0]
    expected = f"an index 0-{len(names) - 1} or one of {', '.join(names)}"
    raise FitmError(f"--class: {raw!r} is not {adapter.noun.format(root=data_cfg.root)} (expected {expected})")


def load_split(data_cfg) -> Split:
    """The normal class's training images and the labelled test set of data_cfg's dataset."""
    adapter = _adapter(data_cfg)
    size = data_cfg.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FitmError(f"data.image_size: expected a positive integer, got {size!r}")
    return adapter.load(data_cfg, canonical_class(data_cfg))


__all__ = [
    "Split", "canonical_class", "cifar100_fine_test", "class_names", "is_grayscale", "list_images", "load_fakes",
    "load_split", "read_images", "resize_images", "slice_class", "validate_images",
]
