"""The discriminator: a timm VisionTransformer with a fresh 2-way head, its weights, and its frozen part."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from fitm.errors import FitmError
from fitm.runtime import log

WEIGHT_FILES = (".npz", ".pth", ".pt", ".safetensors")
HOW_TO = (
    "download ViT-B_16.npz (Google's ImageNet-21k+1k ViT-B/16, "
    "storage.googleapis.com/vit_models/imagenet21k+imagenet2012/ViT-B_16.npz) and pass --pretrained PATH, "
    "or pass --pretrained none to train from scratch (poor results)"
)


def create_backbone(det_cfg) -> nn.Module:
    """The configured ViT with num_classes=2, weights per detector.pretrained, and a fresh head.

    The head starts from PyTorch's default Linear initialisation whatever the weights, as in the authors'
    model (their `zero_head=True` only skips loading the checkpoint's head): a zero head would give the
    backbone no gradient at first. timm keeps a checkpoint's head when its size happens to match, and
    initialises its own differently, so the head is reset here.
    """
    pretrained = str(det_cfg.pretrained)
    kwargs = _architecture_kwargs(det_cfg)

    if pretrained == "" and det_cfg.needs_pretrained:
        raise FitmError(f"detector.pretrained is not set: {HOW_TO}")
    if pretrained in ("", "none"):
        log.warning("detector.pretrained=%r: the ViT starts from random weights; expect poor results", pretrained)
        model = _create(det_cfg.backbone, False, kwargs)
    elif _is_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FitmError(f"detector.pretrained: {path} does not exist (expected a weights file: {HOW_TO})")
        model = _create(det_cfg.backbone, False, kwargs)
        if path.suffix == ".npz":
            _load_npz(model, path)
        else:
            _load_state_dict(model, path)
    else:
        model = _create_from_hub(pretrained, det_cfg.backbone, kwargs)

    model.head.reset_parameters()
    return model


def _architecture_kwargs(det_cfg) -> dict:
    # The authors' ViT drops out after the embeddings and after the activation and the output of every MLP:
    # timm's pos_drop_rate and proj_drop_rate (whose attention-projection half is switched off in _create).
    dropout = {"pos_drop_rate": det_cfg.dropout, "proj_drop_rate": det_cfg.dropout}
    arch = {k: v for k, v in det_cfg.arch.items() if v is not None}
    return {"num_classes": 2, "img_size": det_cfg.img_size, **dropout, **arch}


def create_architecture(det_cfg) -> nn.Module:
    """The configured ViT with untouched random weights: the shell a saved detector's state dict fills."""
    return _create(det_cfg.backbone, False, _architecture_kwargs(det_cfg))


def _is_path(name: str) -> bool:
    return Path(name).suffix in WEIGHT_FILES or "/" in name or "\\" in name


def _create(name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise FitmError(f"detector.backbone={name!r} is not a timm model name") from e
        raise
    except (TypeError, AssertionError) as e:
        raise FitmError(f"detector.arch/img_size {kwargs}: not accepted by timm model {name!r} ({e})") from e
    if not all(hasattr(model, a) for a in ("blocks", "patch_embed", "forward_head")):
        raise FitmError(f"detector.backbone={name!r} is not a timm VisionTransformer")
    for block in model.blocks:
        block.attn.proj_drop.p = 0.0  # none in attention, as in the authors' ViT
    return model


def _create_from_hub(name: str, backbone: str, kwargs: dict) -> nn.Module:
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise FitmError(
            f"detector.pretrained={name!r} is neither a weights file (.npz, .pth, .pt, .safetensors) "
            "nor a timm model name, nor 'none'")
    if arch != backbone:
        raise FitmError(
            f"detector.pretrained={name!r} is a {arch} but detector.backbone={backbone!r}: expected the same "
            "architecture")
    try:
        return _create(name, True, kwargs)
    except FitmError:
        raise
    except Exception as e:
        raise FitmError(
            f"detector.pretrained={name!r}: timm could not fetch these weights ({type(e).__name__}); "
            f"without network access, {HOW_TO}") from e


def _load_npz(model: nn.Module, path: Path) -> None:
    """Google's JAX layout through timm, which also resamples the position embedding to img_size."""
    try:
        model.load_pretrained(str(path))
    except KeyError as e:
        raise FitmError(
            f"detector.pretrained: {path} lacks key {e} expected for this ViT in Google's .npz layout") from e
    except (ValueError, RuntimeError) as e:
        raise FitmError(
            f"detector.pretrained: {path} does not fit this ViT as a Google .npz checkpoint: "
            f"{str(e).splitlines()[0]}") from e


def _load_state_dict(model: nn.Module, path: Path) -> None:
    """A timm-keyed state dict; its head is dropped and its position embedding resampled if only that differs."""
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FitmError(f"detector.pretrained: {path} could not be read as a state dict ({e})") from e
    if isinstance(state, dict) and not all(torch.is_tensor(v) for v in state.values()):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise FitmError(f"detector.pretrained: {path} holds no state dict of tensors")

    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape and pos.ndim == 3 \
            and pos.shape[-1] == own["pos_embed"].shape[-1]:
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        grid = (pos.shape[1] - prefix) ** 0.5
        if grid == int(grid):
            state["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=model.patch_embed.grid_size, num_prefix_tokens=prefix)

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{name} {_first(keys)}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong)) if keys]
        raise FitmError(f"detector.pretrained: {path} does not fit the configured ViT: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


def _first(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def freeze(model: nn.Module, n_blocks: int) -> None:
    """Freeze the first n_blocks encoder blocks, as the authors do; embeddings and later blocks train."""
    if not 0 <= n_blocks <= len(model.blocks):
        raise FitmError(
            f"detector.frozen_blocks={n_blocks}: expected 0..{len(model.blocks)} (the ViT's depth)")
    for p in model.blocks[:n_blocks].parameters():
        p.requires_grad_(False)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The CLS pre-logits feature after the final LayerNorm: FITYMI's kNN space."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
