import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from fitm.config import load_config
from fitm.configs.default import get_config
from fitm.detector import BatchTransform, create_backbone, extract_features, features, freeze, metrics
from fitm.detector.train import epochs_for, linear_probe, train_discriminator
from fitm.detector.transforms import NORMALIZE
from fitm.errors import FitmError
from fitm.knn import knn_scores
from fitm.runtime import Runtime

CPU = torch.device("cpu")
RUNTIME = Runtime.local("cpu", quiet=True)


def tiny_cfg(**overrides):
    cfg = get_config().detector
    cfg.backbone = "vit_tiny_patch16_224"
    cfg.arch.update({"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2})
    cfg.img_size, cfg.resize = 32, 36
    cfg.pretrained, cfg.needs_pretrained = "none", False
    cfg.update(overrides)
    return cfg


def coordinate_images(n, size):
    """Channel 0 holds each pixel's row, channel 1 its column: a crop's output says where it came from."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    img = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    return torch.from_numpy(np.repeat(img[None], n, 0))


def unnormalize(x, name="imagenet"):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZE[name])
    return (x * std + mean) * 255


@pytest.mark.parametrize("name", ["imagenet", "inception"])
def test_constant_image_normalises_to_mean_std(name):
    t = BatchTransform(tiny_cfg(normalize=name), CPU)
    value = torch.tensor([200, 100, 50], dtype=torch.uint8)
    out = t(value.view(1, 1, 1, 3).expand(2, 20, 20, 3).contiguous(), train=True)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    mean, std = (torch.tensor(v) for v in NORMALIZE[name])
    expected = ((value / 255 - mean) / std).view(1, 3, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_eval_is_deterministic_centre_crop():
    t = BatchTransform(tiny_cfg(resize=40), CPU)
    images = coordinate_images(3, 40)
    out = t(images)
    torch.testing.assert_close(out, t(images))
    torch.testing.assert_close(unnormalize(out), images.permute(0, 3, 1, 2)[:, :, 4:36, 4:36].float(),
                               atol=1e-3, rtol=0)


def test_train_crops_and_flips_vary_per_sample():
    t = BatchTransform(tiny_cfg(resize=40), CPU, seed=3)
    out = unnormalize(t(coordinate_images(64, 40), train=True)).round()
    rows, cols = out[:, 0], out[:, 1]
    steps = torch.arange(32.0)
    top, left = rows[:, 0, 0], cols[:, 0, :].min(1).values
    flipped = cols[:, 0, 0] > cols[:, 0, -1]
    # every output is a 32x32 window of its input, mirrored left-right when flipped
    assert torch.equal(rows, (top[:, None] + steps).view(64, 32, 1).expand(64, 32, 32))
    expected_cols = torch.where(flipped[:, None], left[:, None] + 31 - steps, left[:, None] + steps)
    assert torch.equal(cols, expected_cols.view(64, 1, 32).expand(64, 32, 32))
    assert 0 <= top.min() and top.max() <= 8 and 0 <= left.min() and left.max() <= 8
    assert len(set(top.tolist())) > 4 and len(set(left.tolist())) > 4
    assert 10 < int(flipped.sum()) < 54
    again = BatchTransform(tiny_cfg(resize=40), CPU, seed=3)(coordinate_images(64, 40), train=True)
    torch.testing.assert_close(unnormalize(again).round(), out)


def test_bad_inputs_raise():
    with pytest.raises(FitmError, match="uint8 NHWC"):
        BatchTransform(tiny_cfg(), CPU)(torch.zeros(2, 3, 32, 32))
    with pytest.raises(FitmError, match="detector.normalize"):
        BatchTransform(tiny_cfg(normalize="zscore"), CPU)
    with pytest.raises(FitmError, match="detector.resize=30"):
        BatchTransform(tiny_cfg(resize=30), CPU)
    with pytest.raises(FitmError, match="fakes: expected uint8"):
        train_discriminator(create_backbone(tiny_cfg()), np.zeros((2, 8, 8, 3), np.uint8),
                            np.zeros((2, 8, 8, 1), np.uint8), tiny_cfg(), RUNTIME, seed=0)


def blobs(n, size, rng):
    """Smooth images: one bright Gaussian blob per image on a dark background."""
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)[..., None] * rng.uniform(150, 250, (n, 1, 1, 3))
    return img.astype(np.uint8)


def test_train_separates_normals_from_fakes(tmp_path):
    rng = np.random.default_rng(0)
    normal = blobs(64, 16, rng)
    fakes = rng.integers(0, 256, (64, 20, 20, 3), dtype=np.uint8)  # a different size from the normals
    cfg = tiny_cfg(epochs=3, batch_size=16, lr=0.02, momentum=0.9, weight_decay=0.0, feature_batch_size=24)
    torch.manual_seed(0)
    model = create_backbone(cfg)
    freeze(model, 1)
    rows = train_discriminator(model, normal, fakes, cfg, RUNTIME, seed=0, log_path=tmp_path / "log.csv")

    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["loss"] < 0.3 and rows[-1]["accuracy"] > 0.9
    assert all(r["images_per_s"] > 0 for r in rows)
    with open(tmp_path / "log.csv") as f:
        logged = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in logged] == pytest.approx([r["loss"] for r in rows])

    bank = extract_features(model, normal, cfg, RUNTIME)
    test = np.concatenate([blobs(20, 16, rng), rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)])
    queries = extract_features(model, test, cfg, RUNTIME)
    assert bank.shape == (64, 64) and bank.dtype == torch.float32
    scores = knn_scores(queries, bank, k=cfg.k)
    assert metrics(scores, np.r_[np.zeros(20), np.ones(20)])["auroc"] > 0.9

    # batching does not change features: the same as one eval-transformed batch
    with torch.no_grad():
        whole = features(model, BatchTransform(cfg, CPU)(torch.from_numpy(test)))
    torch.testing.assert_close(queries, whole, atol=1e-4, rtol=1e-4)


def test_training_is_seeded():
    rng = np.random.default_rng(1)
    normal, fakes = blobs(24, 16, rng), rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    cfg = tiny_cfg(epochs=1, batch_size=16, lr=0.02)
    losses = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        model = create_backbone(cfg)
        losses.append(train_discriminator(model, normal, fakes, cfg, RUNTIME, seed=seed)[0]["loss"])
    assert losses[0] == losses[1] != losses[2]


def test_min_steps_raises_the_epochs_of_a_small_set():
    cfg = tiny_cfg(epochs=8, batch_size=64, min_steps=300)
    assert epochs_for(cfg, 100) == 150  # 2 steps per epoch: 150 epochs make the 300 steps
    assert epochs_for(cfg, 100_000) == 8  # a large set keeps the recipe's epochs
    assert epochs_for(tiny_cfg(epochs=8, batch_size=64, min_steps=0), 100) == 8


@pytest.mark.parametrize("name, steps", [("folder", 1000), ("mvtec", 1000), ("mvtec_cpu", 1000), ("cifar10_cpu", 300)])
def test_configs_for_small_sets_give_50_images_enough_steps(name, steps):
    """The configs people bring their own (often small) sets to: 50 normal images and 50 fakes. cifar10_cpu trains
    every block after a linear probe, where 1,000 steps overfit a 50-image set (BENCHMARKS.md)."""
    det = load_config(path=str(Path(__file__).parents[2] / "configs" / f"{name}.py")).detector
    assert epochs_for(det, 100) * math.ceil(100 / det.batch_size) >= steps


def test_near_chance_accuracy_is_warned_about(caplog):
    rng = np.random.default_rng(2)
    same = rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = create_backbone(tiny_cfg())
    rows = train_discriminator(model, same, same.copy(), tiny_cfg(epochs=1, batch_size=16), RUNTIME, seed=0)
    assert rows[-1]["accuracy"] < 0.6  # normals and fakes are the same images: nothing to learn
    assert "near chance" in caplog.text


def test_near_chance_is_judged_on_balanced_accuracy_when_fakes_outnumber_normals(caplog):
    """Answering "fake" for everything scores the fakes' share in plain accuracy; the warning must still fire."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = create_backbone(tiny_cfg())
    rows = train_discriminator(model, images[:8], images[8:], tiny_cfg(epochs=6, batch_size=16, lr=0.05), RUNTIME,
                               seed=0)
    last = rows[-1]
    assert last["accuracy"] > 0.8  # the majority answer: 56 of 64 are "fakes"
    assert last["balanced_accuracy"] < 0.6
    assert "near chance" in caplog.text


def test_separable_fakes_give_a_high_balanced_accuracy_and_no_warning(caplog):
    rng = np.random.default_rng(5)
    normal = blobs(16, 16, rng)
    fakes = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = create_backbone(tiny_cfg())
    rows = train_discriminator(model, normal, fakes, tiny_cfg(epochs=8, batch_size=16, lr=0.05, momentum=0.9),
                               RUNTIME, seed=0)
    assert rows[-1]["balanced_accuracy"] > 0.9
    assert "near chance" not in caplog.text


def test_linear_probe_sets_a_head_that_already_tells_fakes_apart():
    """Before any SGD step, the fitted head separates normals from fakes that the random head cannot, with
    fakes outnumbered (balanced classes); the backbone is left as it was."""
    rng = np.random.default_rng(2)
    normal = blobs(24, 16, rng)
    fakes = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = create_backbone(cfg)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head")}
    x = BatchTransform(cfg, CPU)(torch.from_numpy(np.concatenate([normal, fakes])))
    y = torch.cat([torch.zeros(24), torch.ones(12)]).long()
    model.eval()
    with torch.no_grad():
        before = model(x).argmax(1)

    balanced = linear_probe(model, normal, fakes, cfg, RUNTIME)

    with torch.no_grad():
        after = model(x).argmax(1)
    assert balanced == pytest.approx(balanced_accuracy_score(y, after)) and balanced > 0.95
    assert balanced_accuracy_score(y, before) < 0.8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in backbone.items())


def test_fakes_never_outnumber_the_normal_images():
    from fitm.config import fakes_count

    cfg = get_config()
    for count, n_normal, expected in ((0, 50, 50), (2500, 50, 50), (30, 50, 30), (2500, 5000, 2500)):
        cfg.fakes.count = count
        assert fakes_count(cfg, n_normal) == expected


def test_a_non_finite_loss_stops_training_with_the_key_to_change():
    rng = np.random.default_rng(3)
    normal, fakes = blobs(16, 16, rng), rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = create_backbone(tiny_cfg())
    with pytest.raises(FitmError, match=r"non-finite in epoch \d.*detector\.lr"):
        train_discriminator(model, normal, fakes, tiny_cfg(epochs=3, batch_size=8, lr=1e6, momentum=0.9), RUNTIME,
                            seed=0)


@pytest.mark.parametrize("backbone, frozen, trainable_prefix", [
    ("resnet18", 2, "layer3."), ("convnext_tiny", 1, "stages.1."), ("vit_tiny_patch16_224", 1, "blocks.1."),
])
def test_any_timm_classifier_trains_and_scores(backbone, frozen, trainable_prefix):
    """The backbone adapter: a fresh 2-way head, the first blocks or stages frozen, pre-logits features."""
    from fitm.detector.backbone import blocks

    arch = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2} if backbone.startswith("vit") else {}
    cfg = tiny_cfg(backbone=backbone, epochs=2, batch_size=16, lr=0.02, momentum=0.9, dropout=0.0)
    cfg.arch = {k: arch.get(k) for k in cfg.arch}
    torch.manual_seed(0)
    model = create_backbone(cfg)
    freeze(model, frozen)
    names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert names and all(not n.startswith(trainable_prefix) for n in names)
    assert any(n.startswith(trainable_prefix) and p.requires_grad for n, p in model.named_parameters())
    assert len(blocks(model)) >= 2 and model.get_classifier().out_features == 2
    rng = np.random.default_rng(0)
    normal, fakes = blobs(48, 16, rng), rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = train_discriminator(model, normal, fakes, cfg, RUNTIME, seed=0)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in names)  # frozen stayed
    assert rows[-1]["accuracy"] > 0.8
    bank = extract_features(model, normal, cfg, RUNTIME)
    test = np.concatenate([blobs(16, 16, rng), rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)])
    scores = knn_scores(extract_features(model, test, cfg, RUNTIME), bank, k=2)
    assert metrics(scores, np.r_[np.zeros(16), np.ones(16)])["auroc"] > 0.8
