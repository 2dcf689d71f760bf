"""Train the score model on the normal class, snapshot it for early stopping, and draw fakes from a snapshot.

Resumption is exact: every random draw of the training loop (batch indices, flips, t, noise) comes from one
generator on the device, dropout uses the global torch RNG, and both states travel in the checkpoint with the
model, EMA, optimizer and the running loss window."""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fitm.errors import FitmError
from fitm.io import fingerprint, save_csv, save_torch
from fitm.report import save_grid
from fitm.runtime import autocast, compiled, log, progress, seed_everything
from fitm.sde.losses import dsm_loss
from fitm.sde.sampling import check_sampling_config, sample
from fitm.sde.sde import VPSDE
from fitm.sde.unet import ScoreUNet

GRID_IMAGES = 64
_CKPT = re.compile(r"ckpt_(\d+)\.pt")


def checkpoint_path(workdir: str | Path, step: int) -> Path:
    return Path(workdir) / f"ckpt_{step}.pt"


def checkpoint_step(path: str | Path) -> int:
    """The training step of a checkpoint_path."""
    return int(_CKPT.fullmatch(Path(path).name).group(1))


class ScoreTrainer:
    """Model, EMA, optimizer and the training RNG on one device; `step(i)` runs training step i (1-based)."""

    def __init__(self, images: np.ndarray, config, device: torch.device | str):
        self.config, self.tcfg, self.device = config, config.training, torch.device(device)
        seed_everything(config.seed)
        self.sde = VPSDE.from_config(config.sde)
        self.model = ScoreUNet(config.model, config.data.image_size)
        self.model.to(self.device, memory_format=memory_format(self.tcfg))
        self.forward = compiled(self.model, self.tcfg.compile)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.params, self.ema_params = list(self.model.parameters()), list(self.ema.parameters())
        self.opt = torch.optim.Adam(
            self.params, lr=self.tcfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=self.device.type == "cuda"
        )
        self.gen = torch.Generator(self.device).manual_seed(config.seed)
        self.data = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).contiguous()
        self.loss_sum = torch.zeros((), device=self.device)  # over the current log window
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite loss, read lazily
        self.model.train()

    def step(self, step: int) -> float:
        """One optimisation step; returns its learning rate. Nothing here waits for the device."""
        tcfg, gen, device, batch = self.tcfg, self.gen, self.device, self.tcfg.batch_size
        idx = torch.randint(self.data.shape[0], (batch,), generator=gen, device=device)
        x = (self.data[idx].float() / 127.5 - 1).contiguous(memory_format=memory_format(tcfg))
        flip = torch.rand(batch, generator=gen, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        lr = tcfg.lr * min(step / tcfg.warmup, 1.0) if tcfg.warmup > 0 else tcfg.lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        with autocast(device, tcfg.amp):
            loss = dsm_loss(self.forward, self.sde, x, gen, tcfg.eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, tcfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            # score_sde's EMA warm-up: early snapshots must not be dominated by the initial weights.
            decay = min(self.config.model.ema_rate, (1 + step) / (10 + step))
            torch._foreach_lerp_(self.ema_params, self.params, 1 - decay)
            loss = loss.detach()
            self.bad_step = torch.where((self.bad_step < 0) & ~loss.isfinite(), step, self.bad_step)
            self.loss_sum += loss
        return lr

    def state_dict(self, step: int) -> dict:
        rng = {"device": self.device.type, "data": self.gen.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": step,
            "loss_sum": self.loss_sum,
            "rng": rng,
        }

    def load_state_dict(self, ckpt: dict) -> int:
        """Restore a checkpoint; returns its step."""
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.loss_sum.copy_(ckpt["loss_sum"])
        step, rng = int(ckpt["step"]), ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["device"] != self.device.type:
            log.warning("score model: checkpoint was trained on %s, resuming on %s: reseeding its sampling RNG",
                        rng["device"], self.device.type)
            self.gen.manual_seed(self.config.seed + step)
        else:
            self.gen.set_state(rng["data"])
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        return step


def train_score_model(images: np.ndarray, config, workdir: str | Path, device: torch.device | str) -> list[Path]:
    """Train on uint8 NHWC `images`; return the checkpoints at training.snapshot_iters and training.n_iters."""
    workdir, device, tcfg = Path(workdir), torch.device(device), config.training
    snapshots = _snapshot_steps(tcfg)
    paths = [checkpoint_path(workdir, s) for s in snapshots]
    data = _check_images(images, config.data.image_size)
    check_sampling_config(config.sampling)
    fp = fingerprint(data, {k: config[k].to_dict() for k in ("sde", "model")}, config.seed, _recipe(tcfg))
    if all(p.is_file() for p in paths):
        _check_fingerprint(paths[-1], _read_checkpoint(paths[-1]), fp)
        return paths

    trainer = ScoreTrainer(data, config, device)
    start, last_good, rows = 0, None, []
    resume = _newest_checkpoint(workdir, snapshots[-1])
    if resume is not None:
        ckpt = _read_checkpoint(resume, mmap=False)
        _check_fingerprint(resume, ckpt, fp)
        start, last_good = trainer.load_state_dict(ckpt), resume
        del ckpt
        rows = _read_log(workdir / "train_log.csv", start)
        log.info("score model: resuming from %s", resume)
        if not _grid_path(resume).is_file():
            _write_grid(trainer.ema, config, device, _grid_path(resume))

    bar = progress(range(start + 1, snapshots[-1] + 1), initial=start, total=snapshots[-1], desc="score model")
    for step in bar:
        lr = trainer.step(step)
        is_snapshot = step in snapshots
        if (step % tcfg.log_every == 0 or is_snapshot) and trainer.bad_step.item() >= 0:
            raise FitmError(
                f"training: non-finite loss at step {trainer.bad_step.item()}; last good checkpoint: "
                f"{last_good or 'none'} (try a lower training.lr or training.grad_clip)"
            )
        if step % tcfg.log_every == 0:
            rows.append({"step": step, "loss": (trainer.loss_sum / tcfg.log_every).item(), "lr": lr})
            trainer.loss_sum.zero_()
            save_csv(rows, workdir / "train_log.csv")
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4g}")
        if is_snapshot:
            path = checkpoint_path(workdir, step)
            save_torch(dict(trainer.state_dict(step), fingerprint=fp), path)
            last_good = path
            _write_grid(trainer.ema, config, device, _grid_path(path))
    return paths


def load_ema_model(ckpt_path: str | Path, config, device: torch.device | str) -> ScoreUNet:
    """The EMA weights of a checkpoint in a ScoreUNet built from config.model, in eval mode."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FitmError(f"score-model checkpoint {path} does not exist")
    ckpt = _read_checkpoint(path)
    with torch.device("meta"):
        model = ScoreUNet(config.model, config.data.image_size)
    try:
        model.load_state_dict(ckpt["ema"], assign=True)
    except (KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitmError(f"{path}: does not hold EMA weights for this model.* / data.image_size config ({first})") from e
    return model.to(device).eval().requires_grad_(False)


def generate_fakes(ckpt_path: str | Path, config, count: int, seed: int, device: torch.device | str) -> np.ndarray:
    """`count` uint8 NHWC images from a checkpoint's EMA model with config.sampling, batched by
    sampling.batch_size; the same seed, device and batch size give the same images."""
    if not isinstance(count, int) or count < 1:
        raise FitmError(f"fakes.count: expected a positive number of fakes, got {count!r}")
    device = torch.device(device)
    check_sampling_config(config.sampling)
    model = load_ema_model(ckpt_path, config, device)
    sde = VPSDE.from_config(config.sde)
    size, bs = config.data.image_size, config.sampling.batch_size
    eps_fn = model_eps_fn(model, device, config.training)
    gen = torch.Generator(device).manual_seed(seed)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for lo in progress(range(0, count, bs), desc="fakes", total=-(-count // bs)):
        n = min(bs, count - lo)
        x = sample(eps_fn, sde, (n, 3, size, size), config.sampling, gen, device)
        out[lo : lo + n] = to_uint8(x)
    return out


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW tensor -> uint8 NHWC array, rounded to the nearest level."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def model_eps_fn(model: nn.Module, device: torch.device, tcfg):
    """The network as a float32 epsilon function for the samplers, with the training section's precision
    (bf16 autocast on GPU when training.amp), memory format and compilation."""
    model = model.to(memory_format=memory_format(tcfg))
    forward = compiled(model, tcfg.compile)

    def eps_fn(x, t):
        with autocast(device, tcfg.amp):
            return forward(x.contiguous(memory_format=memory_format(tcfg)), t).float()

    return eps_fn


def memory_format(tcfg) -> torch.memory_format:
    """channels_last when training.channels_last: faster convolutions on some GPUs, the same results."""
    return torch.channels_last if tcfg.channels_last else torch.contiguous_format


def _write_grid(ema: nn.Module, config, device: torch.device, path: Path) -> None:
    size, sde = config.data.image_size, VPSDE.from_config(config.sde)
    x = sample(
        model_eps_fn(ema, device, config.training), sde, (GRID_IMAGES, 3, size, size), config.sampling,
        config.seed, device,
    )
    save_grid(to_uint8(x), path, nrow=8)


def _grid_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name.replace("ckpt_", "samples_").replace(".pt", ".png"))


def _snapshot_steps(tcfg) -> list[int]:
    n_iters = tcfg.n_iters
    if not isinstance(n_iters, int) or n_iters < 1:
        raise FitmError(f"training.n_iters={n_iters!r} must be a positive integer")
    snaps = sorted(set(tcfg.snapshot_iters) | {n_iters})
    if any(not isinstance(s, int) or not 1 <= s <= n_iters for s in snaps):
        raise FitmError(
            f"training.snapshot_iters={tuple(tcfg.snapshot_iters)} must be integers in 1..training.n_iters={n_iters}"
        )
    if not isinstance(tcfg.batch_size, int) or tcfg.batch_size < 1:
        raise FitmError(f"training.batch_size={tcfg.batch_size!r} must be a positive integer")
    if not isinstance(tcfg.log_every, int) or tcfg.log_every < 1:
        raise FitmError(f"training.log_every={tcfg.log_every!r} must be a positive integer")
    return snaps


def _recipe(tcfg) -> dict:
    """The training settings a checkpoint depends on; n_iters and snapshot_iters may change between runs."""
    return {k: tcfg[k] for k in ("batch_size", "lr", "warmup", "grad_clip", "eps", "amp", "log_every")}


def _check_images(images, image_size: int) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = type(images).__name__
        if isinstance(images, np.ndarray):
            got = f"{images.dtype} array of shape {images.shape}"
        raise FitmError(f"generate: normal images must be a uint8 NHWC array with 3 channels, got {got}")
    if images.shape[1:3] != (image_size, image_size):
        raise FitmError(
            f"generate: normal images are {images.shape[1]}x{images.shape[2]} but data.image_size={image_size}"
        )
    if images.shape[0] < 2:
        raise FitmError(
            f"generate: need at least 2 normal training images to train the score model, got {images.shape[0]}"
        )
    return np.ascontiguousarray(images)


def _read_checkpoint(path: Path, mmap: bool = True) -> dict:
    """mmap reads only the tensors used (the EMA weights, the fingerprint); resuming needs them all, copied."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitmError(f"{path}: not a readable score-model checkpoint ({first})") from e


def _check_fingerprint(path: Path, ckpt: dict, fp: str) -> None:
    if ckpt.get("fingerprint") != fp:
        raise FitmError(
            f"{path}: checkpoint was trained on other images or sde/model/training settings; "
            f"remove {path.parent} (or use --force) to train afresh"
        )


def _newest_checkpoint(workdir: Path, last_step: int) -> Path | None:
    steps = [int(m.group(1)) for p in workdir.glob("ckpt_*.pt") if (m := _CKPT.fullmatch(p.name))]
    steps = [s for s in steps if s <= last_step]
    return checkpoint_path(workdir, max(steps)) if steps else None


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{"step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"])} for r in csv.DictReader(f)]
    return [r for r in rows if r["step"] <= upto]
