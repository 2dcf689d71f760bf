"""torch.compile (training.compile, detector.compile) and channels_last give eager's outputs: compiled on the
CPU here, within 1e-5 (float32 reassociation; measured differences are about 1e-7)."""

import numpy as np
import pytest
import torch

from fitm.configs.digits import get_config
from fitm.detector.backbone import create_backbone
from fitm.detector.train import extract_features
from fitm.runtime import Runtime
from fitm.sde import ScoreUNet, model_eps_fn

RUNTIME = Runtime.local("cpu", quiet=True)

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def tiny_config():
    c = get_config()
    c.data.image_size = 8
    c.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    c.detector.arch.update(patch_size=4, depth=2, embed_dim=32, num_heads=2)
    c.detector.update(img_size=8, resize=8)
    return c


def random_unet(c):
    torch.manual_seed(0)
    model = ScoreUNet(c.model, c.data.image_size).eval()
    with torch.no_grad():  # undo the zero init of the residual branches, so every path carries signal
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("option", ["compile", "channels_last"])
def test_unet_option_gives_eager_outputs(option):
    c = tiny_config()
    model = random_unet(c)
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4)
    with torch.no_grad():
        eager = model_eps_fn(model, RUNTIME, c.training)(x, t)
        c.training[option] = True
        other = model_eps_fn(model, RUNTIME, c.training)(x, t)
    assert eager.abs().max() > 0.1
    torch.testing.assert_close(other, eager, **TOLERANCE)


def test_compiled_vit_features_equal_eager():
    c = tiny_config()
    torch.manual_seed(0)
    model = create_backbone(c.detector)
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    eager = extract_features(model, images, c.detector, RUNTIME)
    c.detector.compile = True
    torch.testing.assert_close(extract_features(model, images, c.detector, RUNTIME), eager, **TOLERANCE)
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())  # the module itself stays plain
