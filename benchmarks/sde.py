"""Score-model throughput: training steps/s and sampled images/s for the digits and CIFAR-10 recipes, and the
fast DDIM sampler against 1000-step Euler-Maruyama, both timed in this run on the same model and batch.

    python benchmarks/sde.py                         # GPU: the recipes' batches, bf16
    python benchmarks/sde.py --device cpu            # CPU: small batches and few steps, ~2-3 min
    OMP_NUM_THREADS=1 python benchmarks/sde.py --smoke   # tiny U-Nets on the CPU, in seconds: checks the script

On CPU the CIFAR-10 numbers come from a small batch and a 5-step DDIM run, and its 1000-step Euler-Maruyama run
is skipped (it would take hours); the DDIM/EM ratio is then measured on the digits model only.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from fitm.configs import cifar10, digits

from fitm.runtime import Runtime
from fitm.sde import VPSDE, ScoreTrainer, count_parameters, model_eps_fn, sample

CONFIGS = {"digits": digits.get_config, "cifar10": cifar10.get_config}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(config, device: torch.device, steps: int, warmup: int) -> tuple[float, ScoreTrainer]:
    size = config.data.image_size
    images = np.random.default_rng(0).integers(0, 256, (256, size, size, 3), dtype=np.uint8)
    trainer = ScoreTrainer(images, config, Runtime.local(device, quiet=True))
    for i in range(1, warmup + 1):
        trainer.step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(warmup + 1, warmup + steps + 1):
        trainer.step(i)
    sync(device)
    return steps / (time.perf_counter() - start), trainer


def sample_rate(model, config, device: torch.device, method: str, steps: int, batch: int) -> float:
    cfg = copy.deepcopy(config.sampling)
    cfg.update(method=method, steps=steps, corrector="none")
    size, sde = config.data.image_size, VPSDE.from_config(config.sde)
    runtime = Runtime.local(device, quiet=True)
    eps_fn = model_eps_fn(model, runtime, config.training)
    shape = (batch, 3, size, size)
    warm = copy.deepcopy(cfg)
    warm.steps = 2
    sample(eps_fn, sde, shape, warm, 0, device)
    sync(device)
    start = time.perf_counter()
    sample(eps_fn, sde, shape, cfg, 0, device)
    sync(device)
    return batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--smoke", action="store_true", help="tiny U-Nets on the CPU and a few sampler steps: "
                                                             "checks the script, not speed")
    args = parser.parse_args()
    device = torch.device("cpu") if args.smoke else Runtime.local(args.device).device
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = gpu
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)}, bf16 autocast)" if gpu else
                                f", {torch.get_num_threads()} threads, fp32"))

    for name in args.configs:
        config = CONFIGS[name]()
        small = name == "cifar10" and not gpu
        if small:
            config.training.batch_size = 4
        if args.smoke:
            config.data.image_size = 16
            config.model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
            config.sampling.steps = min(config.sampling.steps, 3)
        em_steps = 4 if args.smoke else 1000
        train_steps, warmup = (30, 5) if gpu else ((2, 1) if small else (5, 1))
        rate, trainer = train_rate(config, device, train_steps, warmup)
        batch = config.training.batch_size
        print(f"\n{name}: {count_parameters(trainer.model) / 1e6:.1f} M parameters, "
              f"{config.data.image_size}x{config.data.image_size}")
        print(f"  training        {rate:8.2f} steps/s  {rate * batch:9.1f} images/s  "
              f"(batch {batch}, {train_steps} steps)")

        ema = trainer.ema
        sample_batch = 256 if gpu else (2 if small else 16)
        ddim_steps = 5 if small else config.sampling.steps
        ddim = sample_rate(ema, config, device, "ddim", ddim_steps, sample_batch)
        print(f"  ddim {ddim_steps:4d} steps {ddim:8.2f} images/s  (batch {sample_batch})")
        if small:
            print(f"  euler_maruyama {em_steps} steps: skipped on CPU for cifar10")
            continue
        em = sample_rate(ema, config, device, "euler_maruyama", em_steps, sample_batch)
        print(f"  em   {em_steps:4d} steps {em:8.3f} images/s  (batch {sample_batch})")
        print(f"  ddim / em       {ddim / em:8.1f}x images/s  (network evaluations: "
              f"{(em_steps + 1) / (ddim_steps + 1):.1f}x)")


if __name__ == "__main__":
    main()
