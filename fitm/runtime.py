"""Where and how work runs: device choice, seeding, mixed precision, progress bars, logging."""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fitm.errors import FitmError

log = logging.getLogger("fitm")

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def progress(iterable=None, **kwargs):
    """tqdm that `--quiet` silences."""
    return tqdm(iterable, disable=_quiet, dynamic_ncols=True, leave=False, **kwargs)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FitmError(f"device={name!r} is not a device name (expected auto, cpu, cuda or cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FitmError(f"device={name!r} was asked for but no CUDA device is available")
    return device


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on GPU; full precision on CPU, where bf16 matmuls are slower than fp32 here."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiled(fn, enabled: bool):
    """`fn` through torch.compile when the config asks for it (detector.compile, training.compile), else as is.
    The module itself stays uncompiled, so its state dict keeps its own keys."""
    return torch.compile(fn) if enabled else fn


def add_log_file(path: str | Path) -> logging.Handler:
    """Mirror fitm's log into a file in the run directory."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler
