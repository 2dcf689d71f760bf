"""Ground-truth masks of anomalous test images: MVTec AD's <category>/ground_truth/<defect>/<name>_mask.png, and a
folder dataset's <root>/masks/<folder>/<name>.png. Normal test images have all-zero masks and need no file; an
anomalous image without its mask, or with a mask of another size, is refused (never taken as all zero)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fitm.errors import FitmError


def read_masks(folder: Path, suffix: str, test_paths, test_labels, test_groups, size: int) -> np.ndarray:
    """(N, size, size) uint8 masks of the test images, 1 where a mask's pixel is >= 128, resized (nearest) to size.

    The mask of an anomalous image `<group>/<name>.<ext>` is `folder/<group>/<name><suffix>.png`."""
    masks = np.zeros((len(test_paths), size, size), np.uint8)
    for i in np.flatnonzero(np.asarray(test_labels) == 1):
        image_path = Path(test_paths[i])
        path = folder / str(test_groups[i]) / f"{image_path.stem}{suffix}.png"
        if not path.is_file():
            raise FitmError(f"{path}: no such mask (expected the ground-truth mask of {image_path}, as every "
                            f"anomalous test image has one when {folder} exists)")
        try:
            with Image.open(image_path) as image, Image.open(path) as mask:
                if mask.size != image.size:
                    raise FitmError(f"{path}: the mask is {mask.size[0]}x{mask.size[1]}, but its image {image_path} "
                                    f"is {image.size[0]}x{image.size[1]} (expected the same size)")
                mask = mask.convert("L").resize((size, size), Image.Resampling.NEAREST)
                masks[i] = np.asarray(mask) >= 128
        except (OSError, ValueError, SyntaxError) as e:
            raise FitmError(f"{path}: not a readable mask image ({e})") from None
    return masks
