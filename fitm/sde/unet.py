"""DDPM++ score network (Song et al. 2021, "DDPM++ continuous"): the NCSN++ U-Net with progressive='none'
and no FIR filters. It predicts the noise epsilon in x_t = a(t) x_0 + s(t) epsilon; the score is -epsilon / s(t).

Initialisation follows the reference: fan-average uniform (Xavier) weights, zero biases, the attention's q/k/v
projections at a tenth of that variance, and the last layer of every residual branch (and of the network) set to
zero, so each block starts as the identity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fitm.errors import FitmError

TIME_LABEL_SCALE = 999.0  # the continuous recipe embeds t as the DDPM step label 999 t


def timestep_embedding(labels: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    steps = torch.arange(half, device=labels.device, dtype=torch.float32)
    freqs = torch.exp(steps * (-math.log(max_period) / (half - 1)))
    args = labels.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def _init(layer: nn.Module, zero: bool = False) -> nn.Module:
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


ATTENTION_INIT_SCALE = 0.1  # the reference's default_init(0.1) for q, k, v: variance 0.1 / fan_avg


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(ch // 4, 32), ch, eps=1e-6)


def _conv3(cin: int, cout: int, zero: bool = False, stride: int = 1) -> nn.Conv2d:
    return _init(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), zero)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, time shift, GroupNorm-SiLU-dropout-conv; with `resample` the BigGAN variant that
    halves ('down', average pool) or doubles ('up', nearest) both paths before the first conv."""

    def __init__(self, cin, cout, temb_dim, dropout, skip_rescale, resample: str | None = None):
        super().__init__()
        self.norm0 = _norm(cin)
        self.conv0 = _conv3(cin, cout)
        self.temb = _init(nn.Linear(temb_dim, cout))
        self.norm1 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _conv3(cout, cout, zero=True)
        self.skip = _init(nn.Conv2d(cin, cout, 1)) if cin != cout or resample else None
        self.resample = resample
        self.out_scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        if self.resample == "up":
            h, x = F.interpolate(h, scale_factor=2.0), F.interpolate(x, scale_factor=2.0)  # nearest
        elif self.resample == "down":
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        h = self.conv0(h) + self.temb(temb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * self.out_scale


class Resample(nn.Module):
    """DDPM-style resampling (when resblock_resample is off): strided conv down, nearest + conv up."""

    def __init__(self, ch: int, mode: str):
        super().__init__()
        self.mode = mode
        self.conv = _conv3(ch, ch, stride=2 if mode == "down" else 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:  # temb: same call as ResBlock
        if self.mode == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Attention(nn.Module):
    """Single-head self-attention over the pixels, residual."""

    def __init__(self, ch: int, skip_rescale: bool):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        for w in self.qkv.weight.chunk(3):  # q, k and v each initialised as its own ch x ch layer
            nn.init.xavier_uniform_(w, gain=ATTENTION_INIT_SCALE**0.5)
        nn.init.zeros_(self.qkv.bias)
        self.out = _init(nn.Linear(ch, ch), zero=True)
        self.out_scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = self.out(F.scaled_dot_product_attention(q, k, v))
        return (x + h.transpose(1, 2).reshape(b, c, hgt, wid)) * self.out_scale


class _Level(nn.Module):
    def __init__(self, blocks, attns, resample):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        self.resample = resample


class ScoreUNet(nn.Module):
    """forward(x, t): x (B, C, H, W) in [-1, 1] scale, t (B,) continuous time in [0, 1] -> epsilon (B, C, H, W)."""

    def __init__(self, model_cfg, image_size: int, channels: int = 3):
        super().__init__()
        nf, ch_mult = int(model_cfg.nf), tuple(model_cfg.ch_mult)
        levels = len(ch_mult)
        factor = 2 ** (levels - 1)
        if levels < 1 or image_size < factor or image_size % factor:
            raise FitmError(
                f"data.image_size={image_size} must be a multiple of 2^(len(model.ch_mult)-1)={factor} "
                f"for model.ch_mult={ch_mult}"
            )
        attn_res = set(model_cfg.attn_resolutions)
        temb_dim = 4 * nf
        self.nf, self.channels = nf, channels

        def block(cin, cout, resample=None):
            return ResBlock(cin, cout, temb_dim, model_cfg.dropout, model_cfg.skip_rescale, resample)

        def attention(ch, res):
            return Attention(ch, model_cfg.skip_rescale) if res in attn_res else nn.Identity()

        def resampler(ch, mode):
            return block(ch, ch, mode) if model_cfg.resblock_resample else Resample(ch, mode)

        self.temb = nn.Sequential(_init(nn.Linear(nf, temb_dim)), nn.SiLU(), _init(nn.Linear(temb_dim, temb_dim)))
        self.stem = _conv3(channels, nf)

        skip_ch, ch, down = [nf], nf, []
        for i, mult in enumerate(ch_mult):
            res = image_size >> i
            blocks, attns = [], []
            for _ in range(model_cfg.num_res_blocks):
                blocks.append(block(ch, nf * mult))
                ch = nf * mult
                attns.append(attention(ch, res))
                skip_ch.append(ch)
            resample = None
            if i < levels - 1:
                resample = resampler(ch, "down")
                skip_ch.append(ch)
            down.append(_Level(blocks, attns, resample))
        self.down = nn.ModuleList(down)

        self.mid = nn.ModuleList([block(ch, ch), Attention(ch, model_cfg.skip_rescale), block(ch, ch)])

        up = []
        for i in reversed(range(levels)):
            blocks = []
            for _ in range(model_cfg.num_res_blocks + 1):
                blocks.append(block(ch + skip_ch.pop(), nf * ch_mult[i]))
                ch = nf * ch_mult[i]
            # NCSN++ attends once per level on the way up, after all of the level's blocks.
            up.append(_Level(blocks, [attention(ch, image_size >> i)], resampler(ch, "up") if i > 0 else None))
        self.up = nn.ModuleList(up)

        self.head = nn.Sequential(_norm(ch), nn.SiLU(), _conv3(ch, channels, zero=True))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = F.silu(self.temb(timestep_embedding(t * TIME_LABEL_SCALE, self.nf)))
        hs = [self.stem(x)]
        for level in self.down:
            for blk, attn in zip(level.blocks, level.attns):
                hs.append(attn(blk(hs[-1], temb)))
            if level.resample is not None:
                hs.append(level.resample(hs[-1], temb))
        h = self.mid[0](hs[-1], temb)
        h = self.mid[2](self.mid[1](h), temb)
        for level in self.up:
            for blk in level.blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), temb)
            h = level.attns[0](h)
            if level.resample is not None:
                h = level.resample(h, temb)
        return self.head(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
