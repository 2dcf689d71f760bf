"""How long a config would take on this machine's CPU, measured on the spot: a config sized for a GPU is not
started on a CPU by accident (`device=auto` without a GPU); `--set device=cpu` runs it anyway."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import torch
from ml_collections import ConfigDict

from fitm.errors import FitmError

REFUSE_HOURS = 6.0  # beyond this on a CPU, a config is taken to be meant for a GPU
_ASSUMED_NORMALS = 5000  # the images per class the estimate assumes (a CIFAR-10 class) before data is read


def _seconds_per_call(fn, repeats: int = 1) -> float:
    fn()  # the first call pays for allocation
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def cpu_hours(config: ConfigDict, generate: bool, detect: bool) -> dict[str, float]:
    """Estimated hours of the score model's training and of the detector's fine-tuning on this CPU, from one
    timed training step of each at batch 2, scaled to the config's steps and batches."""
    from fitm.detector.backbone import create_architecture
    from fitm.sde.unet import ScoreUNet

    hours = {}
    if generate:
        size = config.data.image_size
        unet = ScoreUNet(config.model, size)
        x, t = torch.randn(2, 3, size, size), torch.rand(2)
        per_image = _seconds_per_call(lambda: unet(x, t).square().mean().backward()) / 2
        hours["score-model training"] = config.training.n_iters * config.training.batch_size * per_image / 3600
    if detect:
        det = config.detector
        model = create_architecture(det)
        x = torch.randn(2, 3, det.img_size, det.img_size)
        per_image = _seconds_per_call(lambda: model(x).sum().backward()) / 2
        hours["detector fine-tuning"] = det.epochs * 2 * _ASSUMED_NORMALS * per_image / 3600
    return hours


def refuse_gpu_sized_on_cpu(config: ConfigDict, device: torch.device, generate: bool, detect: bool) -> None:
    """One line and exit 2 when a config that leaves the device to fitm would take days on this CPU."""
    if device.type != "cpu" or config.device == "cpu" or not (generate or detect):
        return
    hours = cpu_hours(config, generate, detect)
    total = sum(hours.values())
    if total <= REFUSE_HOURS:
        return
    name = config.data.name
    instead = (f"--config configs/{name}_cpu.py" if importlib.util.find_spec(f"fitm.configs.{name}_cpu")
               else f"--config configs/small_cpu.py --set data.name={name}")
    parts = ", ".join(f"{part} about {value:,.0f} h" for part, value in hours.items())
    raise FitmError(f"no GPU here, and this {name} config is sized for one: on this CPU {parts} (estimated "
                    f"{np.round(total / 24, 1)} days); use {instead}, or --set device=cpu to run it here anyway")
