"""The GPU check: fitm's paper-size path on one GPU, in three steps that `--steps` selects (default: all three, in
this order), so that a short GPU window can run them one at a time. Random detector weights in `rates` and `class`:
no figure of theirs is about detection quality.

    python benchmarks/gpu.py --steps rates               # each part's throughput (below); ~5 minutes on one H200
    python benchmarks/gpu.py --steps class [--compile]   # one whole CIFAR-10 class through fitm's stages
    python benchmarks/gpu.py --steps quality             # SDE fakes against noised normals at 32 px
    python benchmarks/gpu.py                             # all three
    python benchmarks/gpu.py --smoke                     # every step's code on the CPU, tiny models and data,
                                                         # in seconds (the tests run it)

rates: from the default config (configs/cifar10.py) with random weights, on synthetic images, prints
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
On one H200 this step (then the whole script) took 296 s (BENCHMARKS.md).

class: airplane of CIFAR-10 (the shared copy, `--data`; without it a synthetic tree of CIFAR-10's counts, said in
the printout) through fitm's own stages (fitm.stages generate -> detect -> evaluate, in a temporary run folder) at
the config's real sizes: DDPM++ at 32 px, ViT-B/16 at 224 px with random weights, fakes.count as configured. To fit
a short window the score model trains `--class-train-steps` steps (1000; fakes.checkpoint that step, its one
snapshot; the config's other training keys as shipped; training.compile with `--compile`), the fakes are sampled
with `--class-sampler` (dpm_solver:10) and the detector trains `--class-epochs` epochs (5; the config's 30).
Prints each stage's seconds (from the run's durations.json), the score model's steps/s in the stage itself (between
its first and last logged steps: warm-up and compiling left out), the last detector epoch's images/s, the peak GPU
memory, and the class projected at the config's schedule: the measured stage times plus the training steps and
detector epochs not run, at those two rates (the sampler and snapshots as run, not the config's). Expected device
time at the defaults, an estimate from the rates step's figures, not measured: about 5 minutes (more with
--compile, whose compile time has not been measured).

quality: the stand-in protocol at 32 px on airplane: do the score model's fakes beat noised normals through the
same detector? Needs the real CIFAR-10 (`--data`); without it, one line says so and the step is skipped. It
measures, in order:
(a) a stand-in backbone: configs/cifar10_cpu.py's ViT (patch 4, 4 blocks x 128) at 32 px (64 tokens) trained
    supervised on CIFAR-10 classes 5-9 with benchmarks/pretrain.py's recipe for `--quality-pretrain-epochs` (20);
(b) configs/cifar10.py's score model (DDPM++, its training keys as shipped) trained on airplane for
    `--quality-train-steps` (3000; one snapshot there; training.compile with `--compile`), and 5,000 fakes from
    that step (dpm_solver, 10 steps);
(c) the stand-in fine-tuned with configs/cifar10_cpu.py's detector recipe on those fakes, and again on noised
    normals (fakes.source=noised, as benchmarks/quality.py makes them), each scored by kNN AUROC on the protocol's
    test set (airplane's test images against those of classes 1-4 only, never a pretraining class), and the
    stand-in's own kNN AUROC without fine-tuning.
Prints the three AUROCs, SDE minus noised, and each part's seconds. One seed, one class: a first look, not a
verdict. Expected device time at the defaults, an estimate (the score model's 3000 steps at the rates step's
10.68 steps/s are about 5 minutes; the rest not measured on a GPU): about 8-9 minutes.
"""

import argparse
import copy
import csv
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, SMOKE_OVERRIDES, cifar_tree, synthetic_cifar_tree  # noqa: E402
from detector import authors_features, authors_train, fitm_features, fitm_train, knn_rate  # noqa: E402
from pretrain import BATCH, PRETRAIN_CLASSES, read_classes, stand_in  # noqa: E402
from quality import PROTOCOL_CLASSES, backbone_auroc, cheap, restrict, trained_auroc  # noqa: E402
from sde import sample_rate, sync, train_rate  # noqa: E402

from fitm import stages  # noqa: E402
from fitm.config import apply_overrides, fakes_count, load_config, validate_config  # noqa: E402
from fitm.data import load_split  # noqa: E402
from fitm.detector.train import epochs_for  # noqa: E402
from fitm.errors import FitmError  # noqa: E402
from fitm.io import save_torch  # noqa: E402
from fitm.run import Run  # noqa: E402
from fitm.runtime import Runtime  # noqa: E402
from fitm.sde import count_parameters  # noqa: E402
from fitm.sde.sampling import METHODS, nfe  # noqa: E402
from fitm.sde.train import snapshot_steps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "cifar10_cpu.py"  # the quality step's detector recipe and ViT
CIFAR10_TRAIN, CIFAR10_TEST = 5000, 10000  # one class's normal training images; the whole test set
STEPS = ("rates", "class", "quality")


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


@dataclass(frozen=True)
class StepClock(Runtime):
    """A Runtime that notes when each score-model training step begins: the generate stage's own steps, timed."""

    began: dict = field(default_factory=dict, compare=False)

    def progress(self, iterable=None, **kwargs):
        if kwargs.get("desc") == "score model":
            iterable = self._noted(iterable)
        return super().progress(iterable, **kwargs)

    def _noted(self, steps):
        for step in steps:
            self.began[step] = time.perf_counter()
            yield step

    def steps_per_s(self, log_every: int) -> tuple[float, int, int]:
        """Steps/s from the step after the first logged one to the step after the last (a logged step waits for the
        device), so that warm-up and compiling at the start and the snapshot at the end stay out; from the first
        step to the last when fewer than two were logged. Returns the rate and its first and last step."""
        logged = [s + 1 for s in sorted(self.began) if s % log_every == 0 and s + 1 in self.began]
        first, last = (logged[0], logged[-1]) if len(logged) > 1 else (min(self.began), max(self.began))
        if last == first:
            raise FitmError("--class-train-steps: the score model trained too few steps to time (expected >= 2)")
        return (last - first) / (self.began[last] - self.began[first]), first, last


def sampler(text: str) -> tuple[str, int]:
    """METHOD:STEPS, e.g. dpm_solver:10."""
    method, _, steps = text.partition(":")
    if method not in METHODS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected METHOD:STEPS with METHOD one of {', '.join(METHODS)} "
                                         "and STEPS a positive integer, e.g. dpm_solver:10")
    return method, int(steps)


def shorten(config, steps: int, sampling: tuple[str, int], compile_: bool, smoke: bool):
    """The score model trained to `steps`, its one snapshot (fakes.checkpoint), and its fakes drawn with `sampling`;
    the config's other keys as they are (under --smoke, common.py's few steps first). One snapshot: no grid or
    checkpoint midway to blur the steps' timing."""
    if smoke:
        config = apply_overrides(config, SMOKE_OVERRIDES)
    tcfg = config.training
    tcfg.snapshot_iters, tcfg.n_iters, tcfg.compile = (), steps, compile_
    config.fakes.checkpoint = str(steps)
    config.sampling.method, config.sampling.steps = sampling
    return config


def trained_to(config) -> int:
    """The step the generate stage trains the score model to: that of a fixed fakes.checkpoint, or the last
    snapshot for 'auto' (at most: it stops once its choice is settled)."""
    snapshots = snapshot_steps(config.training)
    return max(snapshots) if config.fakes.checkpoint == "auto" else stages.checkpoint_step(snapshots,
                                                                                         config.fakes.checkpoint)


class Laps:
    """The seconds of each part, one after the other."""

    def __init__(self):
        self.seconds, self.last = {}, time.perf_counter()

    def __call__(self, part: str) -> None:
        now = time.perf_counter()
        self.seconds[part], self.last = now - self.last, now


# --- rates: each part's throughput, and one class projected from them -----------------------------------------

def rates(args, device: torch.device) -> None:
    """The rates step: each part's throughput from random weights and synthetic images, and one class projected."""
    gpu = device.type == "cuda"
    config = load_config(path=args.config)
    config.device = str(device)
    if args.smoke:
        config = smoke_config(config)
    det = config.detector
    recipe_epochs = det.epochs
    det.pretrained, det.needs_pretrained, det.epochs = "none", False, 1

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


# --- class: one whole CIFAR-10 class through fitm's stages ------------------------------------------------------

def class_step(args, device: torch.device, root: Path, data: str) -> None:
    gpu = device.type == "cuda"
    real = load_config(path=args.config)
    real.detector.update(pretrained="none", needs_pretrained=False)
    if args.smoke:
        real = smoke_config(real)
    config = shorten(copy.deepcopy(real), args.class_train_steps, args.class_sampler, args.compile, args.smoke)
    config.device = str(device)
    config.data.update(name="cifar10", normal_class="airplane", root=str(root))
    config.detector.epochs = args.class_epochs
    validate_config(config, "benchmarks/gpu.py --steps class")
    split = load_split(config.data)
    tcfg, det, name = config.training, config.detector, Path(args.config).name
    print(f"\nclass step: airplane of {data}: {len(split.normal_train)} normal training images, "
          f"{len(split.test_labels)} test images at {config.data.image_size} px")
    print(f"  score model: {tcfg.n_iters} steps (fakes.checkpoint={config.fakes.checkpoint}), batch {tcfg.batch_size}, "
          f"{'bf16' if gpu and tcfg.amp else 'fp32'}, training.compile {tcfg.compile}; fakes: "
          f"{config.sampling.method} {config.sampling.steps} steps")
    print(f"  detector: {det.backbone} at {det.img_size} px, random weights, detector.epochs {det.epochs} "
          f"({name}: {real.detector.epochs})")
    runtime = StepClock.local(device, quiet=True)
    peak_memory(device)
    with tempfile.TemporaryDirectory() as tmp, Run(Path(tmp) / "airplane") as run:
        task = stages.Task(run=run, config=config, split=split, runtime=runtime)
        fakes = stages.generate(task)
        model, summary = stages.detect(task, fakes)
        stages.evaluate(task, model, summary)
        seconds = {stage: run.durations()[stage]["seconds"] for stage in ("generate", "detect", "evaluate")}
        with open(run.detector_log, newline="") as f:
            epoch_rate = float(list(csv.DictReader(f))[-1]["images_per_s"])
    memory = peak_memory(device)
    rate, first, last = runtime.steps_per_s(tcfg.log_every)
    n_train = len(split.normal_train) + len(fakes)
    print(f"  generate  {seconds['generate']:8.1f} s   ({len(fakes)} fakes; score model {rate:.2f} steps/s from step "
          f"{first} to {last})")
    print(f"  detect    {seconds['detect']:8.1f} s   ({summary['epochs']} epochs of {n_train} images, "
          f"{epoch_rate:.1f} images/s in the last)")
    print(f"  evaluate  {seconds['evaluate']:8.1f} s")
    print(f"  stages    {sum(seconds.values()):8.1f} s   (peak {memory})")

    steps, epochs = trained_to(real), epochs_for(real.detector, n_train)
    projected = {"generate": seconds["generate"] + (steps - tcfg.n_iters) / rate,
                 "detect": seconds["detect"] + (epochs - summary["epochs"]) * n_train / epoch_rate,
                 "evaluate": seconds["evaluate"]}
    until = f"{'up to' if real.fakes.checkpoint == 'auto' else 'to'} step {steps}"
    print(f"  projected at {name}'s schedule (training {until} and {epochs} detector epochs, at the rates above; "
          f"sampling and snapshots as run):")
    print("    " + ", ".join(f"{stage} {value / 60:.1f} min" for stage, value in projected.items())
          + f"; one class {sum(projected.values()) / 60:.1f} min")


# --- quality: SDE fakes against noised normals through the same detector, at 32 px ------------------------------

def quality_config(args, device: torch.device, root: Path):
    """configs/cifar10_cpu.py's detector recipe with its ViT at --config's image size (32 px: resize and crop
    scaled alike), and --config's score model, training keys and sampling section, shortened."""
    config, paper = load_config(path=str(CPU_CONFIG)), load_config(path=args.config)
    for section in ("sde", "model", "training", "sampling"):
        config[section] = copy.deepcopy(paper[section])
    det, size = config.detector, paper.data.image_size
    det.update(img_size=size, resize=size * det.resize // det.img_size)
    config.data.update(name="cifar10", normal_class="airplane", root=str(root), image_size=size)
    if args.smoke:
        config = smoke_config(config)
    config = shorten(config, args.quality_train_steps, sampler("dpm_solver:10"), args.compile, args.smoke)
    config.device = str(device)
    return config


def quality_step(args, device: torch.device, root: Path | None, data: str) -> None:
    if root is None:
        print(f"\nquality step: skipped: it needs the real CIFAR-10 data, and {args.data} is absent (--data PATH)")
        return
    config = quality_config(args, device, root)
    det, tcfg, size = config.detector, config.training, config.data.image_size
    others = ", ".join(PROTOCOL_CLASSES[1:])
    print(f"\nquality step: airplane at {size} px of {data}; anomalies: the test images of {others}")
    laps = Laps()
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = read_classes(root, "train", PRETRAIN_CLASSES, size)
        print(f"  stand-in: {det.backbone} (patch {det.arch.patch_size}, {det.arch.depth} blocks x "
              f"{det.arch.embed_dim}, {(det.img_size // det.arch.patch_size) ** 2} tokens) at {det.img_size} px, "
              f"{args.quality_pretrain_epochs} epochs on {len(images)} images of classes 5-9", flush=True)
        backbone = stand_in(det, images, labels, args.quality_pretrain_epochs, batch=16 if args.smoke else BATCH,
                            seed=config.seed, device=device)
        weights = Path(tmp) / "stand-in.pth"
        save_torch({k: v.cpu() for k, v in backbone.state_dict().items()}, weights)
        del backbone, images, labels
        laps("stand-in")
        config.detector.pretrained = str(weights)
        validate_config(config, "benchmarks/gpu.py --steps quality")
        split = restrict(load_split(config.data), list(PROTOCOL_CLASSES), 0)
        runtime = Runtime.local(device, quiet=True)
        laps("data")
        count, sampling = fakes_count(config, len(split.normal_train)), config.sampling
        print(f"  score model: {Path(args.config).name}'s, {tcfg.n_iters} steps, batch {tcfg.batch_size}; {count} "
              f"fakes, {sampling.method} {sampling.steps} steps; detector: {CPU_CONFIG.name}'s recipe from the "
              f"stand-in; {len(split.test_labels)} test images", flush=True)
        with Run(Path(tmp) / "airplane") as run:
            task = stages.Task(run=run, config=config, split=split, runtime=runtime)
            knn = backbone_auroc(task)
            laps("stand-in kNN")
            fakes = stages.generate(task)
            laps("score model and fakes")
            sde = trained_auroc(task, "sde_fakes", fakes)
            laps("SDE-fakes detector")
            noised = trained_auroc(task, "noised_normals", cheap(task, "noised"))
            laps("noised detector")
    print(f"  stand-in kNN AUROC    {100 * knn:6.2f}")
    print(f"  SDE fakes AUROC       {100 * sde:6.2f}")
    print(f"  noised normals AUROC  {100 * noised:6.2f}   (fakes.noise_std {config.fakes.noise_std})")
    print(f"  SDE minus noised      {100 * (sde - noised):+6.2f} points")
    print("  seconds: " + ", ".join(f"{part} {value:.1f}" for part, value in laps.seconds.items())
          + f"; total {sum(laps.seconds.values()):.1f}")


# --- the command --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                        help="which steps to run (always in the order rates, class, quality)")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, not speed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10.py"))
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="cifar10-jpeg.tar.gz or its unpacked tree")
    parser.add_argument("--large-batch", type=int, default=256, help="rates: fitm's detector training at this "
                                                                     "batch too")
    parser.add_argument("--class-train-steps", type=int, default=None, help="class: score-model steps (default "
                                                                            "1000; 6 with --smoke)")
    parser.add_argument("--class-epochs", type=int, default=None, help="class: detector epochs (default 5; 1 "
                                                                       "with --smoke)")
    parser.add_argument("--class-sampler", type=sampler, default="dpm_solver:10", metavar="METHOD:STEPS",
                        help="class: how the fakes are sampled (default dpm_solver:10)")
    parser.add_argument("--compile", action="store_true", help="class and quality: training.compile=True")
    parser.add_argument("--quality-train-steps", type=int, default=None, help="quality: score-model steps "
                                                                              "(default 3000; 6 with --smoke)")
    parser.add_argument("--quality-pretrain-epochs", type=int, default=None, help="quality: the stand-in's "
                                                                                  "epochs (default 20; 1 with --smoke)")
    args = parser.parse_args()
    for key, full, smoke in (("class_train_steps", 1000, 6), ("class_epochs", 5, 1), ("quality_train_steps", 3000, 6),
                             ("quality_pretrain_epochs", 20, 1)):
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)

    logging.getLogger("fitm").setLevel(logging.ERROR)  # random weights are expected here
    device = torch.device("cpu") if args.smoke else Runtime.local(args.device).device
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = gpu
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}); config {Path(args.config).name}{' --smoke' if args.smoke else ''}")
    if "rates" in args.steps:
        rates(args, device)
    if "class" not in args.steps and "quality" not in args.steps:
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            root, data = synthetic_cifar_tree(Path(tmp) / "data"), "a tiny synthetic tree (--smoke)"
        elif args.data.exists():
            root, data = cifar_tree(args.data), f"the shared CIFAR-10 copy ({args.data})"
        else:
            root, data = None, ""
        if "class" in args.steps:
            if root is None:
                made = synthetic_cifar_tree(Path(tmp) / "synthetic", CIFAR10_TRAIN, CIFAR10_TEST // 10, size=32)
                class_step(args, device, made, f"a synthetic tree of CIFAR-10's counts ({args.data} is absent)")
            else:
                class_step(args, device, root, data)
        if "quality" in args.steps:
            quality_step(args, device, root, data)


if __name__ == "__main__":
    try:
        main()
    except FitmError as e:
        sys.exit(f"gpu: {e}")
