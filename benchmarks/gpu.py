"""The GPU check in one command: fitm's paper-size path on one GPU, each pair measured in this run.

    python benchmarks/gpu.py             # one GPU: ViT-B/16 at 224 px, DDPM++ (61.8 M) at 32 px; ~5 minutes
    python benchmarks/gpu.py --smoke     # the same code on the CPU with tiny models, in seconds (the tests run it)

Prints, from the default config (configs/cifar10.py) with random weights:
- detector training images/s: fitm's path (uint8 on the device, batched transforms, bf16) at the config's batch
  and at a large batch, against the authors' recipe (DataLoader of PIL images, per-image torchvision
  transforms, fp32, batch 16);
- feature extraction images/s, both ways;
- score-model training steps/s, bf16 autocast against fp32;
- sampler images/s, DDIM-100 against Euler-Maruyama-1000;
- the peak GPU memory of each part;
- the projected minutes of one CIFAR-10 class end to end at the default config (generate: training,
  the 'auto' probes, the fakes; detect: fine-tuning, features, kNN), from the rates above;
- last, as compiling takes minutes: training.channels_last, training.compile and detector.compile against eager.
On one H200 the whole script took 296 s (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector import authors_features, authors_train, fitm_features, fitm_train, knn_rate  # noqa: E402
from sde import sample_rate, sync, train_rate  # noqa: E402

from fitm.config import load_config  # noqa: E402
from fitm.runtime import Runtime  # noqa: E402
from fitm.sde import count_parameters  # noqa: E402
from fitm.sde.sampling import nfe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TRAIN, CIFAR10_TEST = 5000, 10000  # one class's normal training images; the whole test set


def peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    gib = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return f"{gib:.1f} GiB"


def smoke_config(config):
    """Tiny models with the same code path: what `--smoke` measures on a CPU in seconds."""
    config.data.image_size = 16
    config.model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    config.training.batch_size = 8
    det = config.detector
    det.backbone = "vit_tiny_patch16_224"
    det.arch.update(patch_size=8, depth=2, embed_dim=64, num_heads=2)
    det.update(img_size=32, resize=36, frozen_blocks=1)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, not speed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10.py"))
    parser.add_argument("--large-batch", type=int, default=256, help="fitm's detector training at this batch too")
    args = parser.parse_args()

    logging.getLogger("fitm").setLevel(logging.ERROR)  # random weights are expected here
    device = torch.device("cpu") if args.smoke else Runtime.local(args.device).device
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = gpu
    config = load_config(path=args.config)
    config.device = str(device)
    if args.smoke:
        config = smoke_config(config)
    det = config.detector
    recipe_epochs = det.epochs
    det.pretrained, det.needs_pretrained, det.epochs = "none", False, 1
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}); config {Path(args.config).name}{' --smoke' if args.smoke else ''}")

    # --- detector ---------------------------------------------------------------------------------------
    n_images = 4096 if gpu else 64
    ref_steps = 60 if gpu else 2
    rng = np.random.default_rng(0)
    size = config.data.image_size
    normal = rng.integers(0, 256, (n_images // 2, size, size, 3), dtype=np.uint8)
    fakes = rng.integers(0, 256, (n_images // 2, size, size, 3), dtype=np.uint8)
    print(f"\ndetector: {det.backbone} at {det.img_size} px (resize {det.resize}), {det.frozen_blocks} blocks frozen, "
          f"{n_images} synthetic {size} px images")
    peak_memory(device)
    ours = fitm_train(det, normal, fakes, device)
    large = copy.deepcopy(det)
    large.batch_size = args.large_batch
    ours_large = fitm_train(large, normal, fakes, device)
    memory = peak_memory(device)
    theirs = authors_train(det, normal, fakes, device, 16, ref_steps, 0)
    precision = "bf16" if gpu and det.amp else "fp32"
    print(f"  train     fitm    {ours:9.1f} images/s  (batch {det.batch_size}, {precision})")
    print(f"  train     fitm    {ours_large:9.1f} images/s  (batch {large.batch_size}, {precision}; peak {memory})")
    print(f"  train     authors {theirs:9.1f} images/s  (batch 16, fp32, PIL per image)")
    print(f"  train     ratio   {ours / theirs:9.2f}x at batch {det.batch_size}, {ours_large / theirs:.2f}x at "
          f"batch {large.batch_size}")
    images = np.concatenate([normal, fakes])
    feat = fitm_features(det, images, device)
    feat_theirs = authors_features(det, images, device, 16, ref_steps, 0)
    print(f"  features  fitm    {feat:9.1f} images/s  (batch {det.feature_batch_size}; peak {peak_memory(device)})")
    print(f"  features  authors {feat_theirs:9.1f} images/s  (batch 16, fp32)   ratio {feat / feat_theirs:.2f}x")
    bank = CIFAR10_TRAIN if gpu else 256
    knn = knn_rate(bank, 1024 if gpu else 64, 768 if gpu else 64, device)
    print(f"  kNN               {knn:9.1f} queries/s against {bank} features")

    # --- score model --------------------------------------------------------------------------------------
    tcfg = config.training
    steps, warmup = (20, 5) if gpu else (2, 1)
    print(f"\nscore model: {config.data.image_size} px, batch {tcfg.batch_size}")
    rates = {}
    for amp in (True, False):
        cfg = copy.deepcopy(config)
        cfg.training.amp = amp
        rates[amp], trainer = train_rate(cfg, device, steps, warmup)
        label = ("bf16" if gpu else "amp (fp32 on CPU)") if amp else "fp32"
        print(f"  training  {label}  {rates[amp]:8.2f} steps/s  ({count_parameters(trainer.model) / 1e6:.1f} M "
              f"parameters; peak {peak_memory(device)})")
    print(f"  training  bf16 / fp32 {rates[True] / rates[False]:.2f}x")
    batch = 256 if gpu else 4
    ddim = sample_rate(trainer.ema, config, device, "ddim", 100 if gpu else 3, batch)
    em = sample_rate(trainer.ema, config, device, "euler_maruyama", 1000 if gpu else 4, batch)
    print(f"  sampling  ddim-{100 if gpu else 3:<4} {ddim:9.1f} images/s  (batch {batch}; peak {peak_memory(device)})")
    print(f"  sampling  em-{1000 if gpu else 4:<6} {em:9.1f} images/s  (batch {batch})   ddim / em {ddim / em:.1f}x")

    # --- one CIFAR-10 class at the default config, projected from the rates above -------------------------
    sampler_rate = ddim if config.sampling.method == "ddim" else em
    per_image = nfe(config.sampling)["total"] / (101 if gpu else 4)  # rates above: ddim-100 + denoise
    n_snapshots = len(set(tcfg.snapshot_iters) | {tcfg.n_iters})
    probes = 256 * n_snapshots if config.fakes.checkpoint == "auto" else 0
    grids = 64 * n_snapshots
    minutes = {
        "score-model training": tcfg.n_iters / rates[tcfg.amp] / 60,
        "samples (grids, auto probes, fakes)": (grids + probes + CIFAR10_TRAIN) * per_image / sampler_rate / 60,
        "detector fine-tuning": recipe_epochs * 2 * CIFAR10_TRAIN / ours / 60,
        "features and kNN": (2 * CIFAR10_TRAIN + CIFAR10_TEST) / feat / 60 + (CIFAR10_TRAIN + CIFAR10_TEST) / knn / 60,
    }
    print(f"\none CIFAR-10 class at {Path(args.config).name} (projected from this run's rates):")
    for part, value in minutes.items():
        print(f"  {part:<36} {value:8.1f} min")
    generate = minutes["score-model training"] + minutes["samples (grids, auto probes, fakes)"]
    print(f"  generate stage                       {generate:8.1f} min   (target <= 15 on one H200)")
    print(f"  end to end                           {sum(minutes.values()):8.1f} min")
    sync(device)

    # --- the speed options, last: compiling takes minutes (on a CPU far more, so --smoke leaves them out) -----
    if gpu:
        print("\nspeed options (each compiled in its warm-up, outside the timing):")
        for option in ("channels_last", "compile"):
            cfg = copy.deepcopy(config)
            cfg.training[option] = True
            rate, _ = train_rate(cfg, device, steps, warmup)
            print(f"  score model bf16 + training.{option}: {rate:8.2f} steps/s ({rate / rates[True]:.2f}x bf16 alone)")
        compiled_det = copy.deepcopy(det)
        compiled_det.compile = True
        rate = fitm_train(compiled_det, normal, fakes, device)
        print(f"  detector  training with detector.compile: {rate:9.1f} images/s ({rate / ours:.2f}x eager, "
              f"batch {det.batch_size})")


if __name__ == "__main__":
    main()
