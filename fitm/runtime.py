"""Where and how work runs: one `Runtime` says which device, which rank of how many processes, whether this
process writes, and gives the seeded, batched, gathered and logged helpers every stage uses.

One process is a Runtime of world size 1. Under `torchrun` every process is one rank of the job
(torch.distributed: NCCL between GPUs, gloo on CPU), on the GPU of its LOCAL_RANK; the work of one class is
split over the ranks (data-parallel), and with `--class all` the classes can be split instead, each rank then
working alone on its share (`Runtime.alone`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from fitm.errors import FitmError

log = logging.getLogger("fitm")

# Ranks meet at the end of `--class all` after each has done its share, which may take hours; a rank that
# fails ends the job through torchrun or through the closed connection, not through this timeout.
GROUP_TIMEOUT = datetime.timedelta(hours=72)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise FitmError(f"device={name!r} is not a device name (expected auto, cpu, cuda or cuda:N)") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise FitmError(f"device={name!r} was asked for but no CUDA device is available")
    if device.type == "cuda":
        allow_tf32()
    return device


def allow_tf32() -> None:
    """float32 matmuls and convolutions on TensorFloat-32 cores (a 10-bit mantissa in the products, more than bf16
    autocast keeps): what autocast leaves in float32, and every step with amp off; said once in the log."""
    if not torch.backends.cuda.matmul.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log.info("CUDA: TF32 on for float32 matmuls and convolutions")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compiled(fn, enabled: bool):
    """`fn` through torch.compile when the config asks for it (detector.compile, training.compile), else as is.
    The module itself stays uncompiled, so its state dict keeps its own keys."""
    return torch.compile(fn) if enabled else fn


@dataclass(frozen=True)
class Runtime:
    """device, rank and world size of this process, and whether it shows progress bars."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    quiet: bool = False
    show_progress: bool = True  # the main process of the whole job only

    @classmethod
    def local(cls, device: str | torch.device = "auto", quiet: bool = False) -> "Runtime":
        """One process on one device."""
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        return cls(device=device, quiet=quiet)

    @classmethod
    def from_environment(cls, device: str = "auto", quiet: bool = False) -> "Runtime":
        """The rank this process is under torchrun (WORLD_SIZE > 1), else one local process.

        Under torchrun each rank takes the GPU of its LOCAL_RANK when device is auto or cuda."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.local(device, quiet)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        wanted = resolve_device(device)
        if wanted.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise FitmError(f"torchrun: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs here "
                                "(expected --nproc_per_node <= the number of GPUs)")
            wanted = torch.device("cuda", local_rank)
            torch.cuda.set_device(wanted)
        if not dist.is_initialized():
            backend = "nccl" if wanted.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=GROUP_TIMEOUT, device_id=wanted if backend == "nccl" else None)
        return cls(device=wanted, rank=rank, world_size=world, quiet=quiet, show_progress=rank == 0)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The one process that writes artifacts and logs."""
        return self.rank == 0

    def alone(self) -> "Runtime":
        """This process working on its own (its share of `--class all`), on the same device."""
        return replace(self, rank=0, world_size=1)

    # --- progress, precision, seeds ----------------------------------------------------------------------

    def progress(self, iterable=None, **kwargs):
        """A tqdm bar, shown by the job's main process unless quiet."""
        return tqdm(iterable, disable=self.quiet or not self.show_progress, dynamic_ncols=True, leave=False,
                    **kwargs)

    def autocast(self, enabled: bool = True):
        """bf16 autocast on GPU; full precision on CPU, where bf16 matmuls are slower than fp32 here."""
        if enabled and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def seed(self, seed: int) -> None:
        """The same seed on every rank: identical initial weights and one shared stream of batch draws."""
        seed_everything(seed)

    def seed_rank_stream(self, seed: int) -> None:
        """After the shared draws (initial weights), each rank's own stream for dropout."""
        torch.manual_seed(seed + 7919 * self.rank)

    # --- splitting work and gathering it --------------------------------------------------------------------

    def per_rank(self, total: int, key: str) -> int:
        """A global batch's share of each rank; the global batch of the config is kept whatever the world size."""
        if total % self.world_size:
            raise FitmError(f"{key}={total} does not divide over {self.world_size} processes (expected a multiple "
                            f"of {self.world_size}, so that the global batch stays the config's)")
        return total // self.world_size

    def share(self, n: int, rank: int | None = None) -> slice:
        """This rank's (or `rank`'s) contiguous share of n items; shares differ by at most one."""
        rank = self.rank if rank is None else rank
        bounds = np.linspace(0, n, self.world_size + 1).round().astype(int)
        return slice(int(bounds[rank]), int(bounds[rank + 1]))

    def gather_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's `share(n)` rows, concatenated in rank order, on every rank."""
        if not self.distributed:
            return rows
        sizes = [len(range(n)[self.share(n, r)]) for r in range(self.world_size)]
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]), device=self._collective_device())
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(rows.device)

    def gather_objects(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over the ranks."""
        if not self.distributed:
            return value
        value = value.detach().clone().to(self._collective_device())
        dist.all_reduce(value)
        return value / self.world_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def data_parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under DistributedDataParallel when there are several ranks: gradients averaged over them."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over the global batch
            return DistributedDataParallel(model, device_ids=[self.device])
        return DistributedDataParallel(model)

    # --- the run's log file ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def log_file(self, path: str | Path):
        """Mirror fitm's log into `path` while the block runs (the main process only); the file is closed after,
        so a later run's lines never land in it."""
        if not self.is_main:
            yield
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path)
        except OSError as e:
            raise FitmError(f"{path}: cannot write the run's log there ({e.strerror or e})") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            yield
        finally:
            log.removeHandler(handler)
            handler.close()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
