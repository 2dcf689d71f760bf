"""The discriminator: any timm classifier with a fresh 2-way head, its weights, its frozen first blocks, and the
features it is scored by. The paper's is a ViT (ViT-B/16 from Google's .npz); ResNets, ConvNeXts and the other
timm families go through the same four functions: build, reset the head, freeze the first N blocks or stages
(timm's own `group_matcher`), and pre-logits features (`forward_head(pre_logits=True)`)."""

from __future__ import annotations

import re
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
    """The configured model with num_classes=2, weights per detector.pretrained, and a fresh head.

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
        # 'none' is a deliberate choice (the CPU configs); an unset path on a config that allows it is worth a word.
        (log.info if pretrained == "none" else log.warning)(
            "detector.pretrained=%r: the %s starts from random weights; expect poor results", pretrained,
            det_cfg.backbone)
        if det_cfg.frozen_blocks:
            log.warning("detector.frozen_blocks=%d keeps blocks at their random initial weights, and the gentle "
                        "fine-tuning of a config made for a pretrained backbone learns little from random ones: "
                        "pass --pretrained PATH (benchmarks/pretrain.py makes a CPU stand-in) or set "
                        "detector.frozen_blocks=0", det_cfg.frozen_blocks)
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

    model.get_classifier().reset_parameters()
    return model


def is_vit(name: str) -> bool:
    """Whether timm builds `name` as a VisionTransformer (the paper's family, with its own kwargs)."""
    arch = name.split(".")[0]
    return timm.is_model(arch) and timm.models.model_entrypoint(arch).__module__.endswith(".vision_transformer")


def _architecture_kwargs(det_cfg) -> dict:
    arch = {k: v for k, v in det_cfg.arch.items() if v is not None}
    if not is_vit(det_cfg.backbone):
        # Other families have one dropout, before the classifier: timm's drop_rate.
        return {"num_classes": 2, "drop_rate": det_cfg.dropout, **arch}
    # The authors' ViT drops out after the embeddings and after the activation and the output of every MLP:
    # timm's pos_drop_rate and proj_drop_rate (whose attention-projection half is switched off in _create).
    dropout = {"pos_drop_rate": det_cfg.dropout, "proj_drop_rate": det_cfg.dropout}
    return {"num_classes": 2, "img_size": det_cfg.img_size, **dropout, **arch}


def create_architecture(det_cfg) -> nn.Module:
    """The configured model with untouched random weights: the shell a saved detector's state dict fills."""
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
    if not all(hasattr(model, a) for a in ("forward_head", "get_classifier", "group_matcher")):
        raise FitmError(f"detector.backbone={name!r} is not a timm classifier with forward_head and group_matcher")
    if is_vit(name):
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
    if not hasattr(model, "load_pretrained"):
        raise FitmError(f"detector.pretrained: {path} is a Google .npz checkpoint, which only ViTs read "
                        f"(detector.backbone is {type(model).__name__}); expected a .pth or .safetensors state dict")
    if _apparent_kind(path) != _ZIP:
        raise FitmError(f"detector.pretrained: {path} is not a readable weights file: it looks like "
                        f"{_apparent_kind(path)}; expected {ACCEPTED}")
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
    except Exception:  # torch and safetensors raise many types; their text (the unpickler's) says less than this
        raise FitmError(f"detector.pretrained: {path} is not a readable weights file: it looks like "
                        f"{_apparent_kind(path)}; expected {ACCEPTED}") from None
    if isinstance(state, dict) and not all(torch.is_tensor(v) for v in state.values()):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise FitmError(f"detector.pretrained: {path} holds no state dict of tensors")

    head = _classifier_prefix(model)
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
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
        raise FitmError(f"detector.pretrained: {path} does not fit the configured {type(model).__name__}: "
                        f"{'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


ACCEPTED = "a PyTorch state dict saved by torch.save (.pth/.pt), a .safetensors file, or Google's ViT .npz"
_ZIP = "a zip archive (torch.save's and .npz's format)"


def _apparent_kind(path: Path) -> str:
    """What a file looks like from its first bytes, for a message about a weights file that cannot be read."""
    with open(path, "rb") as f:
        head = f.read(512)
    kinds = ((b"PK\x03\x04", _ZIP), (b"\x80", "a Python pickle of objects other than tensors (not loaded: "
                                                    "unpickling them would run their code)"),
             (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x93NUMPY", "a numpy .npy array"),
             (b"\x1f\x8b", "a gzip file"))
    if not head:
        return "an empty file"
    for magic, kind in kinds:
        if head.startswith(magic):
            return kind
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file that does not parse (damaged or truncated)"
    try:
        text = head.decode()
    except UnicodeDecodeError:
        return "binary data of no format fitm knows"
    return "an HTML page (a failed download?)" if text.lstrip().lower().startswith(("<!doctype", "<html")) else \
        "a text file"


def _first(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _classifier_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the classifier ('head.', 'fc.', 'head.fc.'): a checkpoint's is never loaded."""
    classifier = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is classifier) + "."


def _block_index(name: str, matcher) -> int | None:
    """The block or stage a parameter belongs to, by timm's coarse group_matcher; None for stem, norm, head."""
    patterns = matcher if isinstance(matcher, (list, tuple)) else [(matcher, None)]
    for pattern, fixed in patterns:
        if fixed is None and (m := re.match(pattern, name)):
            return int(m.group(1))
    return None


def blocks(model: nn.Module) -> list[int]:
    """The block (ViT) or stage (CNN) indices of the model, in order."""
    matcher = model.group_matcher(coarse=True)["blocks"]
    return sorted({i for name, _ in model.named_parameters() if (i := _block_index(name, matcher)) is not None})


def freeze(model: nn.Module, n_blocks: int) -> None:
    """Freeze the first n_blocks blocks (ViT) or stages (CNN), as the authors do; embeddings, stem and later
    blocks train."""
    found = blocks(model)
    if not 0 <= n_blocks <= len(found):
        raise FitmError(
            f"detector.frozen_blocks={n_blocks}: expected 0..{len(found)} (the {type(model).__name__}'s blocks or stages)")
    matcher = model.group_matcher(coarse=True)["blocks"]
    frozen = set(found[:n_blocks])
    for name, p in model.named_parameters():
        if _block_index(name, matcher) in frozen:
            p.requires_grad_(False)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pre-logits feature (a ViT's CLS token after the final LayerNorm; a CNN's pooled map): FITYMI's kNN
    space."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
