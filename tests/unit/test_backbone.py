import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed

from fitm.configs.default import get_config
from fitm.detector.backbone import create_backbone, features, freeze
from fitm.errors import FitmError

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


def images(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_npz_loads_google_layout_with_a_fresh_default_initialised_head(tmp_path, write_google_npz):
    src = source_vit()  # a 2-way head: timm would copy it, but the discriminator's head must start fresh
    write_google_npz(src, tmp_path / "vit.npz")
    torch.manual_seed(5)
    model = create_backbone(tiny_cfg(pretrained=str(tmp_path / "vit.npz"))).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(features(model, x), features(src, x), atol=1e-5, rtol=1e-5)
    # PyTorch's default Linear init, as the authors' head: not zero (the backbone gets a gradient from the
    # first step), not the checkpoint's, and within kaiming-uniform's bound 1 / sqrt(fan_in).
    head, bound = model.head, 1 / 64 ** 0.5
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound
    assert head.weight.abs().max() > bound / 2 and torch.count_nonzero(head.bias) == 2
    assert not torch.equal(head.weight, src.head.weight)
    torch.manual_seed(5)
    reference = torch.nn.Linear(64, 2)
    torch.manual_seed(5)
    again = create_backbone(tiny_cfg(pretrained=str(tmp_path / "vit.npz")))
    assert torch.equal(again.head.weight, model.head.weight)  # seeded
    assert reference.weight.std().item() == pytest.approx(head.weight.std().item(), rel=0.5)


def test_dropout_sits_where_the_authors_vit_has_it():
    """0.1 after the embeddings and after the MLP's activation and output; none in attention or before the
    head; active in train mode only."""
    model = create_backbone(tiny_cfg())
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    for i in range(ARCH["depth"]):
        assert rates[f"blocks.{i}.mlp.drop1"] == rates[f"blocks.{i}.mlp.drop2"] == 0.1
        assert rates[f"blocks.{i}.attn.proj_drop"] == rates[f"blocks.{i}.attn.attn_drop"] == 0.0
    assert rates["pos_drop"] == 0.1 and rates.get("head_drop", 0.0) == 0.0
    x = images()
    with torch.no_grad():
        model.train()
        assert not torch.equal(features(model, x), features(model, x))
        model.eval()
        assert torch.equal(features(model, x), features(model, x))
    off = create_backbone(tiny_cfg(dropout=0.0))
    assert all(m.p == 0.0 for m in off.modules() if isinstance(m, torch.nn.Dropout))


def test_npz_position_embedding_resampled_to_img_size(tmp_path, write_google_npz):
    write_google_npz(source_vit(img_size=48, num_classes=10), tmp_path / "vit.npz")
    model = create_backbone(tiny_cfg(pretrained=str(tmp_path / "vit.npz")))
    assert model.pos_embed.shape == (1, 1 + 16, 64)
    assert features(model, images()).shape == (3, 64)


def test_npz_of_other_architecture_raises(tmp_path, write_google_npz):
    write_google_npz(source_vit(embed_dim=32), tmp_path / "small.npz")
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
    assert model.head.weight.shape == (2, 64) and torch.count_nonzero(model.head.weight) == 128  # fresh head


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


def test_frozen_random_blocks_are_warned_about(caplog, tmp_path):
    create_backbone(tiny_cfg(frozen_blocks=1))
    assert "frozen_blocks=1 keeps blocks at their random initial weights" in caplog.text
    caplog.clear()
    create_backbone(tiny_cfg(frozen_blocks=0))
    path = tmp_path / "w.pth"
    torch.save(source_vit().state_dict(), path)
    create_backbone(tiny_cfg(frozen_blocks=1, pretrained=str(path)))
    assert "random initial weights" not in caplog.text
