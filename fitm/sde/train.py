"""Train the score model on the normal class, snapshot it for early stopping, and draw fakes from a snapshot.

Resumption is exact: every random draw of the training loop (batch indices, flips, t, noise) comes from one
generator on the device, dropout uses each rank's global torch RNG, and those states travel in the checkpoint
with the model, EMA, optimizer and the running loss window.

Under torchrun the ranks draw the *global* batch from the same generator and each trains on its share
(DistributedDataParallel averages the gradients), so n ranks follow the one-process run step by step; fakes are
sampled in batches seeded by their index, split over the ranks and gathered in order.

A grey normal class (R = G = B in every image) trains a one-channel model (score_channels) and its samples are
repeated to RGB on the way out (to_uint8): fakes stay grey, as every test image is, instead of "normals plus colour
noise". A checkpoint says its channel count through its weights, and every model rebuilt from one (ema_model)
reads it there.
"""

from __future__ import annotations

import copy
import csv
from typing import Callable

import numpy as np
import torch
from torch import nn

from fitm.data.images import is_grayscale, save_grid
from fitm.errors import FitmError
from fitm.io import save_csv
from fitm.run import ScoreModelFiles, score_model_key
from fitm.runtime import Runtime, compiled, log
from fitm.sde.losses import dsm_draws, dsm_loss
from fitm.sde.sampling import check_sampling_config, sample
from fitm.sde.sde import VPSDE
from fitm.sde.unet import ScoreUNet

GRID_IMAGES = 64


class ScoreTrainer:
    """Model, EMA, optimizer and the training RNG on one device; `step(i)` runs training step i (1-based)."""

    def __init__(self, images: np.ndarray, config, runtime: Runtime):
        self.config, self.tcfg, self.runtime = config, config.training, runtime
        self.device = runtime.device
        self.rows = runtime.share(runtime.world_size * runtime.per_rank(self.tcfg.batch_size, "training.batch_size"))
        runtime.seed(config.seed)
        self.sde = VPSDE.from_config(config.sde)
        channels = score_channels(images)
        self.model = ScoreUNet(config.model, config.data.image_size, channels)
        self.model.to(self.device, memory_format=memory_format(self.tcfg))
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.forward = compiled(runtime.data_parallel(self.model), self.tcfg.compile)
        runtime.seed_rank_stream(config.seed)
        self.params, self.ema_params = list(self.model.parameters()), list(self.ema.parameters())
        self.opt = torch.optim.Adam(
            self.params, lr=self.tcfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=self.device.type == "cuda"
        )
        self.gen = torch.Generator(self.device).manual_seed(config.seed)
        self.data = torch.from_numpy(images[..., :channels]).to(self.device).permute(0, 3, 1, 2).contiguous()
        self.loss_sum = torch.zeros((), device=self.device)  # over the current log window
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite loss, read lazily
        self.model.train()

    def step(self, step: int) -> float:
        """One optimisation step; returns its learning rate. Nothing here waits for the device."""
        tcfg, gen, device, batch, rows = self.tcfg, self.gen, self.device, self.tcfg.batch_size, self.rows
        idx = torch.randint(self.data.shape[0], (batch,), generator=gen, device=device)[rows]
        flip = (torch.rand(batch, generator=gen, device=device) < 0.5)[rows]
        t, z = dsm_draws(batch, self.data.shape[1:], gen, device, tcfg.eps)
        x = self.data[idx].float() / 127.5 - 1
        x = torch.where(flip[:, None, None, None], x.flip(3), x).contiguous(memory_format=memory_format(tcfg))
        lr = tcfg.lr * min(step / tcfg.warmup, 1.0) if tcfg.warmup > 0 else tcfg.lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        with self.runtime.autocast(tcfg.amp):
            loss = dsm_loss(self.forward, self.sde, x, t[rows], z[rows])
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

    def failed_step(self) -> int | None:
        """None while every rank's losses are finite; else this rank's first non-finite step, or -1 when only
        another rank had one (waits for the device)."""
        if self.runtime.mean((self.bad_step >= 0).float()).item() == 0:
            return None
        return int(self.bad_step.item())

    def state_dict(self, step: int) -> dict:
        """Everything a resume needs; the per-rank RNG states of all ranks (a collective under torchrun)."""
        own = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        ranks = self.runtime.gather_objects(own)
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": step,
            "loss_sum": self.runtime.mean(self.loss_sum).to(self.device),
            "rng": {"device": self.device.type, "data": self.gen.get_state(), "ranks": ranks},
        }

    def load_state_dict(self, ckpt: dict) -> int:
        """Restore a checkpoint; returns its step."""
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.loss_sum.copy_(ckpt["loss_sum"])
        step, rng = int(ckpt["step"]), ckpt["rng"]
        if rng["device"] != self.device.type or len(rng["ranks"]) != self.runtime.world_size:
            log.warning("score model: checkpoint was trained on %d %s process(es), resuming on %d %s: its random "
                        "streams are reseeded", len(rng["ranks"]), rng["device"], self.runtime.world_size,
                        self.device.type)
            self.gen.manual_seed(self.config.seed + step)
            self.runtime.seed_rank_stream(self.config.seed + step)
            return step
        self.gen.set_state(rng["data"])
        own = rng["ranks"][self.runtime.rank]
        torch.set_rng_state(own["torch"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.device)
        return step


def train_score_model(images: np.ndarray, config, files: ScoreModelFiles, runtime: Runtime, until: int | None = None,
                      after_snapshot: Callable[[int], bool] | None = None) -> list[int]:
    """Train on uint8 NHWC `images` up to the snapshot `until` (default: training.n_iters), continuing from the
    newest readable checkpoint; return the snapshot steps trained, whose checkpoints then all exist.

    `after_snapshot(step)` is called on every snapshot in order, those already on disk included, once its
    checkpoint is written; when it returns True training stops there: what a run killed and started again
    decides is what it would have decided in one go."""
    tcfg = config.training
    snapshots = [step for step in snapshot_steps(tcfg) if until is None or step <= until]
    data = _check_images(images, config.data.image_size)
    check_sampling_config(config.sampling)
    key = score_model_key(config, data)
    readable = [step for step in files.steps() if files.load_checkpoint(step) is not None]
    for i, step in enumerate(snapshots):
        if step not in readable:
            break
        if after_snapshot is not None and after_snapshot(step):
            return snapshots[: i + 1]
    missing = [step for step in snapshots if step not in readable]
    if not missing:
        return snapshots

    trainer = ScoreTrainer(data, config, runtime)
    start, last_good, rows = 0, None, []
    earlier = [step for step in readable if step < missing[0]]
    if earlier:
        ckpt = files.load_checkpoint(earlier[-1], mmap=False)
        if ckpt.get("fingerprint") != key:
            raise FitmError(f"{files.checkpoint(earlier[-1])}: checkpoint was trained on other images or "
                            f"sde/model/training settings; remove {files.dir} (or use --force) to train afresh")
        start, last_good = trainer.load_state_dict(ckpt), files.checkpoint(earlier[-1])
        rows = _read_log(files, start)
        log.info("score model: resuming from %s", last_good)

    bar = runtime.progress(range(start + 1, snapshots[-1] + 1), initial=start, total=snapshots[-1],
                           desc="score model")
    for step in bar:
        lr = trainer.step(step)
        is_snapshot = step in snapshots
        if step % tcfg.log_every == 0 or is_snapshot:
            failed = trainer.failed_step()
            if failed is not None:
                at = f" at step {failed}" if failed >= 0 else " on another rank"
                raise FitmError(f"training: non-finite loss{at}; last good checkpoint: {last_good or 'none'} "
                                "(try a lower training.lr or training.grad_clip)")
        if step % tcfg.log_every == 0:
            rows.append({"step": step, "loss": runtime.mean(trainer.loss_sum).item() / tcfg.log_every, "lr": lr})
            trainer.loss_sum.zero_()
            if files.writer:
                save_csv(rows, files.train_log)
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4g}")
        if is_snapshot:
            last_good = files.save_checkpoint(step, dict(trainer.state_dict(step), fingerprint=key))
            if files.writer:
                _write_grid(trainer.ema, config, runtime, files.samples(step))
            runtime.barrier()  # the checkpoint is on disk before any rank reads it
            if after_snapshot is not None and after_snapshot(step):
                bar.close()
                return snapshots[: snapshots.index(step) + 1]
    runtime.barrier()
    return snapshots


def score_channels(images: np.ndarray) -> int:
    """The score model's image channels for these uint8 NHWC normal images: 1 for a grey class, else 3."""
    return 1 if is_grayscale(images) else 3


def ema_model(ckpt: dict, config, device: torch.device | str) -> ScoreUNet:
    """The EMA weights of a checkpoint in a ScoreUNet built from config.model with the checkpoint's own channel
    count (its stem's input channels: 1 for a grey class, else 3), in eval mode."""
    try:
        with torch.device("meta"):
            model = ScoreUNet(config.model, config.data.image_size, ckpt["ema"]["stem.weight"].shape[1])
        model.load_state_dict(ckpt["ema"], assign=True)
    except (KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitmError(f"score-model checkpoint of step {ckpt.get('step')}: does not hold EMA weights for this "
                        f"model.* / data.image_size config ({first})") from e
    return model.to(device).eval().requires_grad_(False)


def generate_fakes(model: nn.Module, config, count: int, seed: int, runtime: Runtime) -> np.ndarray:
    """`count` uint8 NHWC images from the score model with config.sampling, in batches of sampling.batch_size
    seeded by (seed, batch index): the same images whatever the number of ranks that share the batches."""
    if not isinstance(count, int) or count < 1:
        raise FitmError(f"fakes.count: expected a positive number of fakes, got {count!r}")
    check_sampling_config(config.sampling)
    sde = VPSDE.from_config(config.sde)
    size, bs = config.data.image_size, config.sampling.batch_size
    eps_fn = model_eps_fn(model, runtime, config.training)
    starts = list(range(0, count, bs))
    parts = []
    for lo in runtime.progress(starts[runtime.share(len(starts))], desc="fakes"):
        gen = torch.Generator(runtime.device).manual_seed(batch_seed(seed, lo // bs))
        shape = (min(bs, count - lo), model.channels, size, size)
        parts.append((lo, to_uint8(sample(eps_fn, sde, shape, config.sampling, gen, runtime.device,
                                          progress=runtime.progress))))
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for rank_parts in runtime.gather_objects(parts):
        for lo, images in rank_parts:
            out[lo:lo + len(images)] = images
    return out


def batch_seed(seed: int, index: int) -> int:
    """An independent seed for batch `index` of a sampling run."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW tensor -> uint8 NHWC array with 3 channels, rounded to the nearest level: a one-channel sample
    (a grey class's model) is repeated to R = G = B on the host, the authors' layout that every stage reads."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return x.expand(-1, -1, -1, 3).contiguous().numpy()


def model_eps_fn(model: nn.Module, runtime: Runtime, tcfg):
    """The network as a float32 epsilon function for the samplers, with the training section's precision
    (bf16 autocast on GPU when training.amp), memory format and compilation."""
    model = model.to(memory_format=memory_format(tcfg))
    forward = compiled(model, tcfg.compile)

    def eps_fn(x, t):
        with runtime.autocast(tcfg.amp):
            return forward(x.contiguous(memory_format=memory_format(tcfg)), t).float()

    return eps_fn


def memory_format(tcfg) -> torch.memory_format:
    """channels_last when training.channels_last: faster convolutions on some GPUs, the same results."""
    return torch.channels_last if tcfg.channels_last else torch.contiguous_format


def _write_grid(ema: nn.Module, config, runtime: Runtime, path) -> None:
    size, sde = config.data.image_size, VPSDE.from_config(config.sde)
    x = sample(model_eps_fn(ema, runtime, config.training), sde, (GRID_IMAGES, ema.channels, size, size),
               config.sampling, config.seed, runtime.device, progress=runtime.progress)
    save_grid(to_uint8(x), path, nrow=8)


def snapshot_steps(tcfg) -> list[int]:
    """training.snapshot_iters and training.n_iters, ascending: the checkpoints training leaves."""
    return sorted(set(tcfg.snapshot_iters) | {tcfg.n_iters})


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


def _read_log(files: ScoreModelFiles, upto: int) -> list[dict]:
    try:
        with open(files.train_log, newline="") as f:
            rows = [{"step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"])}
                    for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError):
        return []  # a missing or damaged log restarts the table; the weights resume all the same
    return [r for r in rows if r["step"] <= upto]
