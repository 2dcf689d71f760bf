import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed

from fitm.configs.default import get_config
from fitm.detector.backbone import create_backbone, features, freeze
from fitm.errors import FitmError

torch.set_num_threads(2)

ARCH = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny_cfg(**overrides):
    cfg = get_config().detector
    cfg.backbone = "vit_tiny_patch16_224"
    cfg.arch.update(ARCH)
    cfg.img_size, cfg.resize = 32, 36
    cfg.pretrained, cfg.needs_pretrained = "none", False
    cfg.update(overrides)
    return cfg


def source_vit(img_size=32, num_classes=2, **arch):
    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, img_size=img_size, **{**ARCH, **arch})
    with torch.no_grad():  # make every parameter distinctive, including the near-zero-initialised ones
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def export_google_npz(model, path):
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


def images(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_npz_loads_google_layout_with_zeroed_head(tmp_path):
    src = source_vit()  # a 2-way head: timm would copy it, but the discriminator's head must start fresh
    export_google_npz(src, tmp_path / "vit.npz")
    model = create_backbone(tiny_cfg(pretrained=str(tmp_path / "vit.npz"))).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(features(model, x), features(src, x), atol=1e-5, rtol=1e-5)
        assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
        assert torch.count_nonzero(model(x)) == 0


def test_npz_position_embedding_resampled_to_img_size(tmp_path):
    export_google_npz(source_vit(img_size=48, num_classes=10), tmp_path / "vit.npz")
    model = create_backbone(tiny_cfg(pretrained=str(tmp_path / "vit.npz")))
    assert model.pos_embed.shape == (1, 1 + 16, 64)
    assert features(model, images()).shape == (3, 64)


def test_npz_of_other_architecture_raises(tmp_path):
    export_google_npz(source_vit(embed_dim=32), tmp_path / "small.npz")
    with pytest.raises(FitmError, match="small.npz"):
        create_backbone(tiny_cfg(pretrained=str(tmp_path / "small.npz")))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_state_dict_round_trip(tmp_path, suffix):
    src = source_vit(num_classes=10)
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    safetensors.torch.save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    model = create_backbone(tiny_cfg(pretrained=str(path))).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(features(model, x), features(src, x), atol=0, rtol=0)
    assert torch.count_nonzero(model.head.weight) == 0


def test_state_dict_position_embedding_resampled(tmp_path):
    src = source_vit(img_size=48)
    torch.save(src.state_dict(), tmp_path / "vit.pt")
    model = create_backbone(tiny_cfg(pretrained=str(tmp_path / "vit.pt")))
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_state_dict_that_does_not_fit_names_keys(tmp_path):
    torch.save(source_vit(depth=3).state_dict(), tmp_path / "deep.pth")
    with pytest.raises(FitmError, match=r"deep\.pth.*unexpected blocks\.2\.norm1\.weight"):
        create_backbone(tiny_cfg(pretrained=str(tmp_path / "deep.pth")))
    torch.save(source_vit(embed_dim=32).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(FitmError, match=r"narrow\.pth.*wrong shape.*cls_token \(1, 1, 32\) vs \(1, 1, 64\)"):
        create_backbone(tiny_cfg(pretrained=str(tmp_path / "narrow.pth")))
    state = source_vit().state_dict()
    del state["norm.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(FitmError, match=r"partial\.pth.*missing norm\.bias"):
        create_backbone(tiny_cfg(pretrained=str(tmp_path / "partial.pth")))


def test_missing_file_and_unset_weights_raise(tmp_path):
    with pytest.raises(FitmError, match="nothere.npz does not exist"):
        create_backbone(tiny_cfg(pretrained=str(tmp_path / "nothere.npz")))
    with pytest.raises(FitmError, match=r"detector\.pretrained is not set: download ViT-B_16\.npz.*--pretrained none"):
        create_backbone(tiny_cfg(pretrained="", needs_pretrained=True))
    with pytest.raises(FitmError, match="neither a weights file"):
        create_backbone(tiny_cfg(pretrained="not_a_model"))
    with pytest.raises(FitmError, match="same architecture"):
        create_backbone(tiny_cfg(pretrained="vit_small_patch16_224.augreg_in21k"))


def test_hub_weights_offline_raise_how_to(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # no cached weights either
    cfg = tiny_cfg(pretrained="vit_tiny_patch16_224.augreg_in21k")
    cfg.arch.update({k: None for k in ARCH})
    with pytest.raises(FitmError, match=r"could not fetch.*ViT-B_16\.npz"):
        create_backbone(cfg)


def test_freeze_leaves_gradients_only_above_frozen_blocks():
    model = create_backbone(tiny_cfg())
    torch.nn.init.normal_(model.head.weight)  # a zero head would send zero gradients into the encoder
    freeze(model, 1)
    model(images(4)).logsumexp(1).sum().backward()
    frozen = list(model.blocks[0].parameters())
    trained = [model.patch_embed.proj.weight, model.cls_token, model.pos_embed, *model.blocks[1].parameters(),
               model.norm.weight, model.head.weight, model.head.bias]
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    with pytest.raises(FitmError, match="frozen_blocks=3"):
        freeze(model, 3)


def test_freeze_zero_blocks_trains_everything():
    model = create_backbone(tiny_cfg())
    freeze(model, 0)
    assert all(p.requires_grad for p in model.parameters())


def test_features_are_the_normed_cls_token():
    model = create_backbone(tiny_cfg()).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(features(model, x), model.forward_features(x)[:, 0])
