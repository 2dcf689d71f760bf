"""Are the fakes near-misses of the class, or blank squares? The degenerate fraction (flat, dark or bright
images; `fakes.degenerate` in the config) and the nearness of the fakes of every score-model snapshot under
several samplers, beside the same figures for the normal training images.

    OMP_NUM_THREADS=1 python benchmarks/fakes.py --classes 0 3 --out runs/fakes-study
    OMP_NUM_THREADS=1 python benchmarks/fakes.py --classes 0 --samplers em50 ddim50 --clip on
    OMP_NUM_THREADS=1 python benchmarks/fakes.py --smoke     # the same code on tiny synthetic data, in seconds

The score model of each class is trained (or reused) in <out>/cifar10/<class>/ exactly as `fitm generate`
does; each snapshot x sampler cell draws --count fakes with the same seed. Writes <out>/fakes.csv, fakes.md
and <out>/<class>_grid.png (one grid per cell: rows snapshots, columns samplers), and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fitm.config import apply_overrides, load_config  # noqa: E402
from fitm.data import load_split  # noqa: E402
from fitm.data.images import grid  # noqa: E402
from fitm.io import save_csv, save_text  # noqa: E402
from fitm.report import _save_figure  # noqa: E402
from fitm.run import Run, score_model_key  # noqa: E402
from fitm.runtime import Runtime  # noqa: E402
from fitm.sde.degenerate import degenerate_masks  # noqa: E402
from fitm.sde.early_stop import nearness  # noqa: E402
from fitm.sde.sampling import nfe  # noqa: E402
from fitm.sde.train import ema_model, generate_fakes, train_score_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_DATA, SMOKE_OVERRIDES, cifar_tree, synthetic_cifar_tree  # noqa: E402

SAMPLERS = {
    "em50": dict(method="euler_maruyama", steps=50, corrector="none"),
    "em100": dict(method="euler_maruyama", steps=100, corrector="none"),
    "em1000": dict(method="euler_maruyama", steps=1000, corrector="none"),
    "ddim50": dict(method="ddim", steps=50, corrector="none"),
    "rd100": dict(method="reverse_diffusion", steps=100, corrector="none"),
    "pc100": dict(method="reverse_diffusion", steps=100, corrector="langevin"),
    "em50_nodenoise": dict(method="euler_maruyama", steps=50, corrector="none", denoise=False),
}
CLIP = {"off": [False], "on": [True], "both": [False, True]}


def cell(config, model, step: int, sampler: str, clip: bool, count: int, normal, held,
         runtime: Runtime) -> tuple[dict, np.ndarray]:
    cfg = copy.deepcopy(config)
    cfg.sampling.update({"denoise": True, **SAMPLERS[sampler], "clip_denoised": clip})
    start = time.perf_counter()
    fakes = generate_fakes(model, cfg, count, cfg.seed, runtime)
    seconds = time.perf_counter() - start
    masks = degenerate_masks(fakes, cfg.fakes.degenerate)
    row = {"step": step, "sampler": sampler, "clip": clip, **{name: float(mask.mean()) for name, mask in masks.items()},
           **nearness(normal, fakes, held, runtime.device), "nfe": nfe(cfg.sampling)["total"], "seconds": seconds}
    return row, fakes


def class_study(config, out: Path, samplers: list[str], clips: list[bool], count: int,
                runtime: Runtime) -> list[dict]:
    split = load_split(config.data)
    run = Run.of(out, config)
    run.dir.mkdir(parents=True, exist_ok=True)  # (no Run.open: the folder may be a quality run's, in use)
    run.sde.prepare(score_model_key(config, split.normal_train))
    clock = time.perf_counter()
    steps = train_score_model(split.normal_train, config, run.sde, runtime)
    print(f"class {split.class_name}: score model ready in {(time.perf_counter() - clock) / 60:.1f} min", flush=True)
    # Held-out normals are the yardstick of nearness; as many others, outside the bank, are its reference row.
    order = np.random.default_rng(config.seed).permutation(len(split.normal_train))
    held, probe = split.normal_train[order[:count]], split.normal_train[order[count:2 * count]]
    normal = split.normal_train[order[2 * count:]]
    base = {name: float(mask.mean()) for name, mask in degenerate_masks(split.normal_train,
                                                                       config.fakes.degenerate).items()}
    rows = [{"class": split.class_name, "step": 0, "sampler": "normal images", "clip": "", **base,
             **nearness(normal, probe, held, runtime.device), "nfe": 0, "seconds": 0.0}]
    pictures, columns = {}, [(sampler, clip) for sampler in samplers for clip in clips]
    for step in steps:
        model = ema_model(run.sde.load_checkpoint(step), config, runtime.device)
        for sampler, clip in columns:
            row, fakes = cell(config, model, step, sampler, clip, count, normal, held, runtime)
            rows.append({"class": split.class_name, **row})
            pictures[step, sampler, clip] = fakes[:36]
            print(f"  step {step:>5} {label(sampler, clip):<20} degenerate {100 * row['degenerate']:5.1f}% "
                  f"(flat {100 * row['flat']:.1f}, dark {100 * row['dark']:.1f}, bright {100 * row['bright']:.1f}), "
                  f"nearness {row['nearness']:.2f}, {row['seconds']:.0f} s", flush=True)
    draw(pictures, steps, columns, split.class_name, out / f"{split.class_name}_grid.png")
    return rows


def label(sampler: str, clip) -> str:
    return f"{sampler}+clip" if clip is True else sampler


def draw(pictures: dict, steps: list[int], columns: list[tuple[str, bool]], name: str, path: Path) -> None:
    fig, axes = plt.subplots(len(steps), len(columns), figsize=(2.6 * len(columns), 2.8 * len(steps)),
                             squeeze=False)
    for r, step in enumerate(steps):
        for c, (sampler, clip) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(grid(pictures[step, sampler, clip], nrow=6), interpolation="nearest")
            ax.set_title(f"{name} step {step}\n{label(sampler, clip)}", fontsize=8)
            ax.axis("off")
    _save_figure(fig, path)


def markdown(rows: list[dict]) -> str:
    lines = ["| class | step | sampler | NFE | degenerate % | flat % | dark % | bright % | closeness | coverage "
             "| nearness | seconds |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['step'] or ''} | {label(r['sampler'], r['clip'])} | {r['nfe'] or ''} | "
              f"{100 * r['degenerate']:.1f} | "
              f"{100 * r['flat']:.1f} | {100 * r['dark']:.1f} | {100 * r['bright']:.1f} | {r['closeness']:.2f} | "
              f"{r['coverage']:.2f} | {r['nearness']:.2f} | {r['seconds']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="cifar10-jpeg.tar.gz or its unpacked tree")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.py"))
    parser.add_argument("--classes", nargs="+", default=["0", "3"])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--clip", choices=list(CLIP), default="both", help="sampling.clip_denoised off, on or both")
    parser.add_argument("--count", type=int, default=256, help="fakes per snapshot and sampler")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "fakes-study")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="airplane, one sampler, 8 fakes, on tiny synthetic "
                                                             "data and a few steps, in a temporary folder: checks "
                                                             "the script, measures nothing")
    args = parser.parse_args()
    if not args.smoke:
        return measure(args)
    with tempfile.TemporaryDirectory() as tmp:
        args.data, args.out = synthetic_cifar_tree(Path(tmp) / "data"), Path(tmp) / "out"
        args.classes, args.samplers, args.count, args.quiet = ["0"], ["em50"], 8, True
        args.overrides = SMOKE_OVERRIDES + args.overrides
        measure(args)


def measure(args) -> None:
    base = apply_overrides(load_config(path=args.config), args.overrides)
    if base.data.name == "cifar10":
        base.data.root = str(cifar_tree(args.data))
    rows = []
    for name in args.classes:
        config = copy.deepcopy(base)
        config.data.normal_class = name
        rows += class_study(config, args.out, args.samplers, CLIP[args.clip], args.count,
                            Runtime.local(config.device, quiet=args.quiet))
        save_csv(rows, args.out / "fakes.csv")  # after every class, so a stopped run keeps what it measured
        save_text(markdown(rows) + "\n", args.out / "fakes.md")
    print(markdown(rows))


if __name__ == "__main__":
    main()
