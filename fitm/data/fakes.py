"""Fakes from a .npy file: the authors' released fakes, the CIFAR-10-FSDE benchmark, or fitm's own."""

from __future__ import annotations

import os

import numpy as np

from fitm.errors import FitmError


def validate_images(array, what: str) -> np.ndarray:
    """`array` as uint8 NHWC with 3 channels (1 channel is repeated); `what` names its source in errors."""
    if not (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 4
            and array.shape[3] in (1, 3)):
        got = f"{array.dtype} of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise FitmError(f"{what}: expected a uint8 NHWC array with 1 or 3 channels, got {got}")
    if len(array) == 0:
        raise FitmError(f"{what}: holds no images (expected a uint8 NHWC array with at least one image)")
    return np.repeat(array, 3, axis=3) if array.shape[3] == 1 else array


def slice_class(array: np.ndarray, class_index: int, num_classes: int, what: str) -> np.ndarray:
    """Class `class_index` of an array in the authors' layout: all classes concatenated in class order,
    equal counts (released fakes: one training set's worth per class; FSDE: 1,000 per class)."""
    if not 0 <= class_index < num_classes:
        raise FitmError(f"{what}: class index {class_index} is out of range (expected 0-{num_classes - 1})")
    if len(array) % num_classes:
        raise FitmError(f"{what}: {len(array)} images do not split into {num_classes} equal classes "
                        "(expected all classes concatenated in class order, equal counts)")
    per_class = len(array) // num_classes
    return array[class_index * per_class:(class_index + 1) * per_class]


def load_fakes(path: str | os.PathLike, class_index: int | None = None, num_classes: int | None = None,
               what: str | None = None) -> np.ndarray:
    """Fakes as uint8 NHWC with 3 channels.

    A file does not say whether it holds one class or all of them, so the caller says it: with
    class_index and num_classes > 1 the file is taken to be in the authors' all-classes layout and
    that class's slice is returned (`load_fakes(p, class_index=3, num_classes=10)`); without
    class_index the whole file is one class's fakes. `what` names the file in errors (default: --fakes PATH)."""
    what = what or f"--fakes {path}"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise FitmError(f"{what}: no such file (expected a .npy of uint8 NHWC images)") from None
    except IsADirectoryError:
        raise FitmError(f"{what}: is a folder (expected a .npy of uint8 NHWC images)") from None
    except (OSError, ValueError) as e:
        raise FitmError(f"{what}: not a readable .npy file ({e})") from None
    if magic != b"\x93NUMPY":
        kind = "is an .npz archive" if magic[:4] == b"PK\x03\x04" else "is not a .npy file"
        raise FitmError(f"{what}: {kind} (expected a .npy of uint8 NHWC images, as np.save writes)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: a class slice reads only its part
    except (OSError, ValueError, EOFError) as e:
        if "Python objects" in str(e) or "pickled" in str(e):
            raise FitmError(f"{what}: holds Python objects, which fitm never loads (expected a .npy of uint8 NHWC "
                            "images)") from None
        raise FitmError(f"{what}: not a readable .npy file ({str(e).splitlines()[0]})") from None
    array = validate_images(array, what)
    if class_index is not None and num_classes is not None and num_classes > 1:
        array = slice_class(array, class_index, num_classes, what)
    return np.array(array)  # in memory, not a view of the mapped file
