"""Anomaly maps: patch tokens of ViTs and CNNs, the map's geometry back to the image, the coreset bank, and maps
that find a bright square pasted on a texture."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import timm
import torch
from torch import nn

from fitm.config import load_config
from fitm.detector.backbone import create_backbone
from fitm.detector.maps import MapGeometry, NoPatchTokens, anomaly_maps, greedy_coreset, patch_bank, spatial_tokens
from fitm.detector.pixel_metrics import aupro, pixel_auroc
from fitm.errors import FitmError
from fitm.runtime import Runtime

TINY = "tests/configs/tiny_digits.py"
SIZE = 32


def detector_config(**maps):
    det = load_config(path=TINY).detector
    det.img_size = det.resize = SIZE
    det.maps.update(maps)
    return det


def stripes(rng, n: int) -> np.ndarray:
    """Grey vertical stripes of random phase with pixel noise: a texture whose every patch has normal neighbours."""
    xx = np.arange(SIZE)[None, None, :]
    pixels = 128 + 40 * np.sin(2 * np.pi * xx / 8 + rng.uniform(0, 2 * np.pi, (n, 1, 1)))
    pixels = pixels + rng.normal(0, 6, (n, SIZE, SIZE))
    return np.clip(pixels, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=3)


def test_vit_tokens_drop_the_prefix_tokens_and_keep_the_grid():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=8, patch_size=4, embed_dim=16,
                              depth=1, num_heads=2, reg_tokens=2).eval()
    tokens = model.forward_features(torch.randn(3, 3, 8, 8))
    grid = spatial_tokens(model, tokens)
    assert model.num_prefix_tokens == 3 and grid.shape == (3, 2, 2, 16)
    assert torch.equal(grid[:, 0, 1], tokens[:, 3 + 1]) and torch.equal(grid[:, 1, 0], tokens[:, 3 + 2])


def test_cnn_feature_maps_become_channels_last_and_pooled_features_are_refused():
    model = timm.create_model("resnet18", num_classes=2).eval()
    tokens = model.forward_features(torch.randn(2, 3, 64, 64))
    assert torch.equal(spatial_tokens(model, tokens), tokens.permute(0, 2, 3, 1))

    class Pooled(nn.Module):
        def forward_features(self, x):
            return x.mean((2, 3))

    with pytest.raises(NoPatchTokens, match=r"Pooled's forward_features gives \(2, 3\).*a ViT or a CNN"):
        spatial_tokens(Pooled(), Pooled().forward_features(torch.randn(2, 3, 8, 8)))


def test_a_hot_patch_lands_where_the_centre_crop_took_it_from():
    det = detector_config(sigma=0.0)
    det.img_size, det.resize = 8, 12  # the crop takes rows and columns 2..9 of the resized 12 px image
    patch_scores = torch.zeros(1, 4, 4)  # patches of 2 px
    patch_scores[0, 1, 2] = 1.0  # crop rows 2..3, columns 4..5; rows 4..5, columns 6..7 of the resized image
    image = MapGeometry(det, image_size=24)(patch_scores)[0]  # stored images of 24 px: twice the resize
    assert image.shape == (24, 24)
    row, col = divmod(int(image.argmax()), 24)
    assert 8 <= row < 12 and 12 <= col < 16
    assert image[:, :4].max() < 1e-6 and image[-4:].max() < 1e-6  # the border repeats the crop's edge


def test_the_gaussian_spreads_the_map_and_keeps_its_mass_inside():
    patch_scores = torch.zeros(1, 4, 4)
    patch_scores[0, 1, 1] = 1.0
    sharp = MapGeometry(detector_config(sigma=0.0), SIZE)(patch_scores)
    smooth = MapGeometry(detector_config(sigma=2.0), SIZE)(patch_scores)
    assert smooth.max() < sharp.max() and (smooth > 1e-3).sum() > (sharp > 1e-3).sum()
    assert float(smooth.sum()) == pytest.approx(float(sharp.sum()), rel=0.02)


def test_greedy_coreset_keeps_the_rare_point_a_random_subsample_misses():
    points = torch.cat([torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 0.01,
                        torch.full((1, 8), 5.0)])
    chosen = greedy_coreset(points, 3, seed=0)
    assert 500 in chosen.tolist() and len(set(chosen.tolist())) == 3


def test_patch_bank_is_cut_to_bank_size_with_a_log_line(caplog):
    model = create_backbone(detector_config()).eval()
    normal = stripes(np.random.default_rng(0), 10)  # 10 images x 64 patches
    runtime = Runtime.local("cpu", quiet=True)
    with caplog.at_level(logging.INFO, logger="fitm"):
        full = patch_bank(model, normal, detector_config(), runtime, seed=0)
        cut = patch_bank(model, normal, detector_config(bank_size=100, subsample="coreset"), runtime, seed=0)
        random = patch_bank(model, normal, detector_config(bank_size=100, subsample="random"), runtime, seed=0)
    assert full.shape == (640, 32) and cut.shape == random.shape == (100, 32)
    assert "640 patch tokens of 10 normal images; the bank keeps 100, a greedy coreset" in caplog.text
    assert "random subsample" in caplog.text
    # every kept token is one of the normal images' tokens
    assert torch.cdist(cut, full, compute_mode="donot_use_mm_for_euclid_dist").min(1).values.max() < 1e-5
    with pytest.raises(FitmError, match=r"detector.maps.k=101: expected at most 100"):
        patch_bank(model, normal, detector_config(bank_size=100, k=101), runtime, seed=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_maps_find_a_bright_square_pasted_on_a_texture(seed):
    rng = np.random.default_rng(seed)
    normal, test = stripes(rng, 40), stripes(rng, 20)
    masks = np.zeros(test.shape[:3], np.uint8)
    for i in range(10):
        y, x = rng.integers(0, SIZE - 8, 2)
        test[i, y:y + 8, x:x + 8] = 250
        masks[i, y:y + 8, x:x + 8] = 1
    det = detector_config(sigma=2.0)
    torch.manual_seed(seed)
    model = create_backbone(det).eval()  # random weights: the square's patches are still unlike any normal patch
    runtime = Runtime.local("cpu", quiet=True)
    maps = anomaly_maps(model, test, patch_bank(model, normal, det, runtime, seed), det, runtime)
    assert maps.shape == (20, SIZE, SIZE) and maps.dtype == np.float32
    assert pixel_auroc(maps, masks) > 0.9
    assert aupro(maps, masks) > 0.7
