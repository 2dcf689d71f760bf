"""Every shipped config at its real size, on CPU: the score model and the detector built exactly as configured
(DDPM++ at 61.8 M parameters, ViT-B/16 at 224 px from a Google-layout .npz written here with random values),
one score-model training step, one sampler step, one detector SGD step, features and kNN. Only batch sizes and
counts are cut, so the GPU path cannot rot unseen on a machine without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from fitm.config import load_config, validate_config
from fitm.detector.backbone import create_backbone, freeze
from fitm.knn import knn_scores
from fitm.runtime import Runtime
from fitm.detector.train import extract_features, train_discriminator
from fitm.sde import VPSDE, ScoreTrainer, count_parameters, model_eps_fn, sample

CPU = Runtime.local("cpu", quiet=True)
CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "configs").glob("*.py") if p.name != "__init__.py")


@pytest.fixture(scope="module")
def vit_b16_npz(tmp_path_factory, request):
    """A random ViT-B/16 in the layout of Google's ViT-B_16.npz (ImageNet-21k head, 224 px)."""
    from tests.conftest import _write_google_npz

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", num_classes=21843)
    path = tmp_path_factory.mktemp("weights") / "ViT-B_16.npz"
    _write_google_npz(model, path)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_runs_at_its_real_size(path, vit_b16_npz):
    config = validate_config(load_config(path=str(path)), str(path))
    config.device = "cpu"
    config.training.batch_size = 2
    config.sampling.update(batch_size=1, steps=2)
    det = config.detector
    det.update(batch_size=4, epochs=1, min_steps=0, feature_batch_size=4)
    if det.needs_pretrained:
        det.pretrained = str(vit_b16_npz)
    size = config.data.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)

    trainer = ScoreTrainer(images, config, CPU)
    n_params = count_parameters(trainer.model)
    if config.model.nf == 128:  # the DDPM++ continuous recipe
        assert 61.5e6 < n_params < 62.5e6, n_params
    trainer.step(1)
    assert trainer.bad_step.item() < 0 and torch.isfinite(trainer.loss_sum)
    x = sample(model_eps_fn(trainer.ema, CPU, config.training), VPSDE.from_config(config.sde),
               (1, 3, size, size), config.sampling, 0, "cpu")
    assert x.shape == (1, 3, size, size) and torch.isfinite(x).all()

    torch.manual_seed(0)
    model = create_backbone(det)
    freeze(model, det.frozen_blocks)
    if det.needs_pretrained:
        assert det.backbone == "vit_base_patch16_224" and det.img_size == 224
        assert sum(p.numel() for p in model.parameters()) == 85_800_194
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 43_272_962  # blocks 0-5 frozen
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    rows = train_discriminator(model, images[:2], images[2:], det, CPU, config.seed)
    assert len(rows) == 1 and np.isfinite(rows[0]["loss"])
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # one SGD step moved the weights
    bank = extract_features(model, images, det, CPU)
    assert bank.shape == (4, model.embed_dim) and torch.isfinite(bank).all()
    scores = knn_scores(bank[:2], bank, det.k)
    assert torch.isfinite(scores).all()
