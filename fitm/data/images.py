"""Image files to uint8 NHWC arrays, batched resizing of arrays already in memory, and image grids to PNG."""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.utils
from PIL import Image

from fitm.errors import FitmError
from fitm.io import atomic_path

log = logging.getLogger("fitm")  # fitm.runtime's log, named here: data sits below runtime

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# PIL warns (DecompressionBombWarning) about any image over Image.MAX_IMAGE_PIXELS; fitm says so in its own
# words, with the size it resizes to (see _read_one), and PIL's still refuses an image over twice the limit.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Files per thread-pool task: large enough that task overhead vanishes next to decoding.
_READ_CHUNK = 512
# Images per interpolation batch: bounds the float copy (1024 x 3 x 256 x 256 floats is 0.8 GB).
_RESIZE_CHUNK = 1024


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder`, sorted by name; hidden files (e.g. macOS '._x.png') are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FitmError(f"{folder}: no such folder (expected a folder of images)")
    paths = sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not paths:
        raise FitmError(f"{folder}: no images there (expected {', '.join(sorted(IMAGE_EXTENSIONS))} files)")
    return paths


def read_images(paths: Sequence[str | os.PathLike], size: int) -> np.ndarray:
    """Decode image files to a uint8 (N, size, size, 3) array: RGB, squashed to a square with an
    antialiased bilinear resize (images already at size x size keep their exact pixels).

    Large lists are read by a thread pool: PIL releases the GIL while it decodes and resizes."""
    paths = list(paths)
    out = np.empty((len(paths), size, size, 3), np.uint8)

    def read_chunk(start: int) -> None:
        for i in range(start, min(start + _READ_CHUNK, len(paths))):
            out[i] = _read_one(paths[i], size)

    starts = range(0, len(paths), _READ_CHUNK)
    if len(starts) <= 1:
        read_chunk(0)
    else:
        with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1, 16)) as pool:
            list(pool.map(read_chunk, starts))  # list() re-raises the first worker's error
    return out


def _read_one(path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.width * img.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                log.warning("large image %s: resized from %dx%d to %dx%d", path, img.width, img.height, size, size)
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size
            img = to_8bit(img)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FitmError(f"{path}: not a readable image ({e})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels  # grayscale broadcasts to 3 channels


def read_image(path) -> np.ndarray:
    """One image file at its own size, as uint8 HxWx3 (any mode PIL reads; see to_8bit)."""
    try:
        with Image.open(path) as img:
            pixels = np.asarray(to_8bit(img))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FitmError(f"{path}: not a readable image ({e})") from None
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def to_8bit(img: Image.Image) -> Image.Image:
    """An 'L' or 'RGB' image with 8 bits per channel, whatever PIL read: 16-bit and 32-bit grey are scaled
    (not clipped) to 0-255, alpha is dropped, palette, CMYK, YCbCr and bilevel images are converted."""
    if img.mode in ("RGB", "L"):
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if img.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("LA", "La", "1"):
        return img.convert("L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # a palette's transparency goes with its alpha (PIL warns when it goes to RGB)
    return img.convert("RGB")


def is_grayscale(images: np.ndarray) -> bool:
    """Whether every image of a uint8 NHWC array has R == G == B exactly: a grey class (CT, many MVTec AD
    categories, digits) read as RGB, whose fakes must stay grey, since colour would be a cue no test image has."""
    return bool((images[..., :1] == images[..., 1:]).all())


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 NHWC images to size x size in batches (bilinear, antialiased as PIL does)."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        batch = torch.from_numpy(images[start:start + _RESIZE_CHUNK]).permute(0, 3, 1, 2).float()
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + _RESIZE_CHUNK] = batch.round_().clamp_(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def grid(images: np.ndarray, nrow: int = 10, max_images: int = 100) -> np.ndarray:
    """One uint8 HWC picture of the first `max_images` uint8 NHWC images."""
    batch = torch.from_numpy(np.ascontiguousarray(images[:max_images])).permute(0, 3, 1, 2)
    return torchvision.utils.make_grid(batch, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0).numpy()


def save_grid(images: np.ndarray, path, nrow: int = 10, max_images: int = 100, min_side: int = 48) -> None:
    """A PNG grid; small images are enlarged (nearest neighbour) so that a person can see them."""
    picture = grid(images, nrow, max_images)
    scale = -(-min_side // images.shape[1])
    if scale > 1:
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="png")
