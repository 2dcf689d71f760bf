"""Shared fixtures: tiny synthetic datasets written to tmp_path, never downloaded, and `fitm` run in this process."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fitm.cli import main

torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_image(path: Path, pixels: np.ndarray) -> None:
    """Write uint8 HxW (grayscale) or HxWx3 pixels; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(pixels).save(path, **options)


def _make_image_tree(root: Path, spec: dict[str, int], size: tuple[int, int] = (12, 10), gray: bool = False,
                    ext: str = ".png", seed: int = 0) -> dict[str, np.ndarray]:
    """Write `count` random images of `size` (width, height) into each folder root/<folder>; returns the
    pixels written per folder, in file-name order."""
    rng = np.random.default_rng(seed)
    written = {}
    for folder, count in spec.items():
        shape = (count, size[1], size[0]) if gray else (count, size[1], size[0], 3)
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        for i, image in enumerate(pixels):
            _write_image(root / folder / f"{i:03d}{ext}", image)
        written[folder] = pixels
    return written


@pytest.fixture
def cli(capsys):
    """`fitm` run in this process: cli(*args) gives its exit code, stdout and stderr."""
    def run(*args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err
    return run


@pytest.fixture
def make_image_tree():
    """_make_image_tree(root, spec, size=(w, h), gray=False, ext='.png', seed=0) -> pixels per folder."""
    return _make_image_tree


@pytest.fixture
def write_image():
    """_write_image(path, pixels): one image file, format from the extension."""
    return _write_image


@pytest.fixture
def mvtec_root(tmp_path) -> Path:
    """Two MVTec AD categories of 20x20 PNGs: bottle (RGB) and grid (grayscale, as MVTec's grid is), with a
    ground-truth mask per defective test image (ground_truth/<defect>/<name>_mask.png: 0, and 255 on a square at
    rows and columns 5..9 shifted by the image's number)."""
    root = tmp_path / "mvtec"
    for category, gray in (("bottle", False), ("grid", True)):
        spec = {"train/good": 4, "test/good": 2, "test/broken": 2, "test/bent": 1}
        _make_image_tree(root / category, spec, size=(20, 20), gray=gray)
        for defect in ("broken", "bent"):
            for i in range(spec[f"test/{defect}"]):
                mask = np.zeros((20, 20), np.uint8)
                mask[5 + i:10 + i, 5 + i:10 + i] = 255
                _write_image(root / category / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def cifar10_jpeg_root(tmp_path) -> Path:
    """The CIFAR-10 JPEG tree layout: train/<class>/*.jpg (2 each), test/<class>/*.jpg (1 each), 32x32."""
    root = tmp_path / "cifar10-jpeg"
    for k, name in enumerate(CIFAR10_NAMES):
        _make_image_tree(root, {f"train/{name}": 2, f"test/{name}": 1}, size=(32, 32), ext=".jpg", seed=k)
    return root


def _cifar_images(labels: np.ndarray) -> np.ndarray:
    """Flat CIFAR rows (N, 3072, channel-major): red = label, green = running index, blue = 7, so tests
    can check class selection and channel order."""
    planes = np.empty((len(labels), 3, 32, 32), np.uint8)
    planes[:, 0] = labels[:, None, None]
    planes[:, 1] = np.arange(len(labels), dtype=np.uint8)[:, None, None]
    planes[:, 2] = 7
    return planes.reshape(len(labels), -1)


def _pickle(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """torchvision checks the md5 of the real CIFAR files; the synthetic ones only need to exist."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def cifar10_root(tmp_path, skip_cifar_md5) -> Path:
    """cifar-10-batches-py in torchvision's format: 2 images per class in each of the 5 training batches
    (10 per class), 3 per class in test_batch."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    for b in range(1, 6):
        labels = np.repeat(np.arange(10), 2)
        _pickle({"data": _cifar_images(labels), "labels": labels.tolist()}, folder / f"data_batch_{b}")
    labels = np.tile(np.arange(10), 3)
    _pickle({"data": _cifar_images(labels), "labels": labels.tolist()}, folder / "test_batch")
    _pickle({"label_names": CIFAR10_NAMES}, folder / "batches.meta")
    return folder.parent


@pytest.fixture
def cifar100_root(tmp_path, skip_cifar_md5) -> Path:
    """cifar-100-python in torchvision's format: one image per fine class in train and in test."""
    folder = tmp_path / "cifar" / "cifar-100-python"
    fine = np.arange(100)
    for split in ("train", "test"):
        _pickle({"data": _cifar_images(fine), "fine_labels": fine.tolist()}, folder / split)
    _pickle({"fine_label_names": [f"fine{i:02d}" for i in range(100)]}, folder / "meta")
    return folder.parent


def _write_google_npz(model, path) -> None:
    """Write `model` in the layout of Google's ViT .npz checkpoints (non-big_vision naming)."""
    t = lambda x: x.detach().numpy().astype(np.float32)
    d, heads = model.embed_dim, model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": t(model.patch_embed.proj.weight).transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": t(model.patch_embed.proj.bias),
        "cls": t(model.cls_token),
        "Transformer/posembed_input/pos_embedding": t(model.pos_embed),
        "Transformer/encoder_norm/scale": t(model.norm.weight),
        "Transformer/encoder_norm/bias": t(model.norm.bias),
        "head/kernel": t(model.head.weight).T,
        "head/bias": t(model.head.bias),
    }
    for i, blk in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        a = p + "MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = t(blk.norm1.weight), t(blk.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = t(blk.norm2.weight), t(blk.norm2.bias)
        qkv_w, qkv_b = t(blk.attn.qkv.weight), t(blk.attn.qkv.bias)
        for j, name in enumerate(("query", "key", "value")):
            w[a + f"{name}/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, heads, d // heads)
            w[a + f"{name}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(heads, d // heads)
        w[a + "out/kernel"] = t(blk.attn.proj.weight).reshape(d, heads, d // heads).transpose(1, 2, 0)
        w[a + "out/bias"] = t(blk.attn.proj.bias)
        for r, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = t(fc.weight).T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = t(fc.bias)
    np.savez(path, **w)


@pytest.fixture
def write_google_npz():
    """_write_google_npz(timm_vit, path): the ViT's weights in Google's .npz layout, as ViT-B_16.npz is."""
    return _write_google_npz
