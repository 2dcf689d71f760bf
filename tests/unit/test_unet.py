"""The DDPM++ score network: shapes, recipe size, time conditioning and the image-size guard."""

import pytest
import torch
from fitm.configs.default import get_config
from ml_collections import ConfigDict

from fitm.errors import FitmError
from fitm.sde import ScoreUNet, count_parameters
from fitm.sde.unet import Attention, Resample, ResBlock



def small_cfg(**kw):
    base = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, skip_rescale=True,
                resblock_resample=True, ema_rate=0.999)
    return ConfigDict(dict(base, **kw))


def randomise(model):
    """Undo the zero initialisation of the residual branches so every path carries signal."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_cifar_recipe_has_about_62m_parameters():
    with torch.device("meta"):
        model = ScoreUNet(get_config().model, 32)
    n = count_parameters(model)
    assert 61.5e6 < n < 62.5e6, n
    assert sum(isinstance(m, Attention) for m in model.modules()) == 4 + 1 + 1  # 4 down, mid, 1 up at 16x16
    assert sum(isinstance(m, ResBlock) and m.resample is not None for m in model.modules()) == 6


@pytest.mark.parametrize("resblock_resample", [True, False])
def test_output_shape_and_time_conditioning(resblock_resample):
    model = randomise(ScoreUNet(small_cfg(resblock_resample=resblock_resample), 8)).eval()
    assert any(isinstance(m, Resample) for m in model.modules()) != resblock_resample
    x = torch.randn(2, 3, 8, 8)
    out = model(x, torch.tensor([0.1, 0.1]))
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, torch.tensor([0.9, 0.9])), atol=1e-4)
    # samples do not interact: the batch is processed per image
    assert torch.allclose(out[:1], model(x[:1], torch.tensor([0.1])), atol=1e-5)


def test_zero_initialised_network_predicts_zero():
    """Recipe init: each residual branch and the output layer start at zero."""
    model = ScoreUNet(small_cfg(), 8)
    assert not model(torch.randn(2, 3, 8, 8), torch.rand(2)).any()


def test_skip_rescale_changes_the_network():
    a = randomise(ScoreUNet(small_cfg(skip_rescale=True), 8))
    b = randomise(ScoreUNet(small_cfg(skip_rescale=False), 8))
    x, t = torch.randn(1, 3, 8, 8), torch.rand(1)
    assert not torch.allclose(a(x, t), b(x, t))


@pytest.mark.parametrize("size", [6, 2, 14])
def test_image_size_the_network_cannot_take_is_refused(size):
    with pytest.raises(FitmError, match=r"data\.image_size.*model\.ch_mult"):
        ScoreUNet(small_cfg(ch_mult=(1, 2, 2)), size)


def test_attention_projections_start_at_the_reference_scale():
    """score_sde's NIN layers in AttnBlockpp: default_init(0.1), uniform with variance 0.1 / fan_avg."""
    ch = 256
    attn = Attention(ch, skip_rescale=True)
    for w in attn.qkv.weight.chunk(3):
        assert w.std().item() == pytest.approx((0.1 / ch) ** 0.5, rel=0.03)
    assert not attn.out.weight.any()  # NIN_3: init_scale 0


def test_dsm_loss_is_per_pixel_mean_and_gradients_are_within_clipping_order():
    """The DDPM++ continuous config averages the loss over pixels (reduce_mean): a fresh model (zero output)
    scores E[z^2] = 1 per image, not the pixel count, and its first gradient is of the order of the clip (1.0)."""
    from fitm.sde import VPSDE, dsm_draws, dsm_loss

    cfg = small_cfg(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1)
    model = ScoreUNet(cfg, 16)
    x0 = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t, z = dsm_draws(len(x0), x0.shape[1:], torch.Generator().manual_seed(1), "cpu")
    loss = dsm_loss(model, VPSDE(), x0, t, z)
    assert loss.item() == pytest.approx(1.0, abs=0.05)
    loss.backward()
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert 1e-3 < grad_norm.item() < 10.0, grad_norm
