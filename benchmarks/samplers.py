"""Which sampler should make the fakes? One score model per class and seed, its fakes drawn by each sampler, each
set through the same detector: images/s, nearness, degenerate fraction and fitm's AUROC, side by side.

The stand-in protocol of benchmarks/quality.py (normal classes 0-4, anomalies from the other classes of 0-4, the
backbone of benchmarks/pretrain.py). The config's own sampler is the `fitm` row (stages.generate); every other
sampler samples the same checkpoint (the one the config chooses) with the same seed and count, and its detector is
trained in a folder of the run of its own (variants/sampler_<name>). A sampler given with --probe-only draws only
the 256 probes that nearness is measured on (speed, nearness, degenerate; no detector).

    OMP_NUM_THREADS=1 python benchmarks/samplers.py --pretrained runs/pretrained/vit_c10_5to9.pth \\
        --classes 0 1 2 3 4 --seeds 0 --samplers euler_maruyama:50 ddim:100 dpm_solver:20 \\
        --probe-only euler_maruyama:1000 --out runs/samplers
    python benchmarks/samplers.py --merge runs/samplers-a/samplers.csv runs/samplers-b/samplers.csv --out runs/samplers
    python benchmarks/samplers.py --merge A.csv B.csv --reference euler_maruyama:50   # runs whose configs sampled
                                                                                     # differently, paired through it
                                                     # (a later row of a class, seed and sampler replaces an earlier)
    python benchmarks/samplers.py --smoke        # tiny synthetic data, seconds: checks the script

Writes <out>/samplers.csv (a row per class, seed and sampler) and samplers.md (means over classes and seeds).
"""

from __future__ import annotations

import argparse
import atexit
import copy
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_DATA, cifar_tree, synthetic_cifar_tree  # noqa: E402
from quality import PROTOCOL_CLASSES, restrict, trained_auroc  # noqa: E402

from fitm import stages  # noqa: E402
from fitm.config import apply_overrides, load_config, validate_config  # noqa: E402
from fitm.data import load_split  # noqa: E402
from fitm.errors import FitmError  # noqa: E402
from fitm.io import save_csv, save_text  # noqa: E402
from fitm.run import Run  # noqa: E402
from fitm.runtime import Runtime  # noqa: E402
from fitm.sde.degenerate import degenerate_fraction  # noqa: E402
from fitm.sde.early_stop import PROBES, fakes_signal  # noqa: E402
from fitm.sde.sampling import nfe  # noqa: E402
from fitm.sde.train import ema_model, generate_fakes  # noqa: E402


def parse_sampler(text: str) -> tuple[str, int]:
    method, _, steps = text.partition(":")
    if not steps.isdigit():
        raise FitmError(f"sampler {text!r}: expected METHOD:STEPS, e.g. dpm_solver:20")
    return method, int(steps)


def sampler_row(task: stages.Task, step: int, method: str, steps: int, count: int, train: bool) -> dict:
    """Fakes of snapshot `step` drawn with (method, steps): their speed, nearness, degenerate share and, when
    `train`, the AUROC of the detector fine-tuned on them."""
    config = copy.deepcopy(task.config)
    config.sampling.method, config.sampling.steps = method, steps
    validate_config(config, f"--samplers {method}:{steps}")
    model = ema_model(task.run.sde.load_checkpoint(step), config, task.runtime.device)
    clock = time.perf_counter()
    fakes = generate_fakes(model, config, count, config.seed, task.runtime)
    seconds = time.perf_counter() - clock
    row = {"class": task.split.class_name, "seed": config.seed, "sampler": f"{method}:{steps}",
           "nfe": nfe(config.sampling)["total"], "step": step, "count": count, "images_per_s": count / seconds,
           "nearness": fakes_signal(task.split.normal_train, fakes, config, task.runtime.device)["nearness"],
           "degenerate": degenerate_fraction(fakes, config.fakes.degenerate), "auroc": float("nan")}
    if train:
        sampled = stages.Task(run=task.run, config=config, split=task.split, runtime=task.runtime)
        row["auroc"] = trained_auroc(sampled, f"sampler_{method}_{steps}", fakes)
    return row


def class_rows(task: stages.Task, samplers, probe_only) -> list[dict]:
    task.run.open()
    clock = time.perf_counter()
    fakes = stages.generate(task)
    seconds = time.perf_counter() - clock
    meta = task.run.fakes_meta()
    model, summary = stages.detect(task, fakes)
    shipped = {"class": task.split.class_name, "seed": task.config.seed,
               "sampler": f"{task.config.sampling.method}:{task.config.sampling.steps} (config)",
               "nfe": meta["nfe"]["total"], "step": meta["step"], "count": len(fakes),
               "images_per_s": float("nan"), "nearness": meta["nearness"], "degenerate": meta["degenerate_fraction"],
               "auroc": stages.evaluate(task, model, summary)["auroc"], "generate_s": seconds}
    rows = [shipped]
    rows += [sampler_row(task, meta["step"], m, s, len(fakes), train=True) for m, s in samplers]
    rows += [sampler_row(task, meta["step"], m, s, min(PROBES, len(fakes)), train=False) for m, s in probe_only]
    return rows


def summary_table(rows: list[dict], reference: str | None = None) -> str:
    """Means per sampler, each paired by class and seed with `reference` (METHOD:STEPS), or else with each run's
    own config sampler: runs made with different config samplers are compared through the one they share."""
    def name(row):
        return str(row["sampler"]).removesuffix(" (config)") if reference else str(row["sampler"])

    def is_reference(row):
        return name(row) == reference if reference else str(row["sampler"]).endswith("(config)")

    seeds = sorted({int(float(r["seed"])) for r in rows})
    classes = list(dict.fromkeys(r["class"] for r in rows))
    against = reference or "the config's sampler"
    lines = [f"Means over {len(classes)} classes x seeds {', '.join(map(str, seeds))}; AUROC %, "
             f"spread = half the range of the per-class-seed AUROC difference to {against}:", "",
             f"| sampler | NFE | images/s | nearness | degenerate % | fitm AUROC | minus {against} | higher on |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {(r["class"], r["seed"]): float(r["auroc"]) for r in rows if is_reference(r)}
    for sampler in dict.fromkeys(name(r) for r in rows):
        mine = [r for r in rows if name(r) == sampler]
        auroc = np.array([float(r["auroc"]) for r in mine])
        diffs = auroc - np.array([base.get((r["class"], r["seed"]), np.nan) for r in mine])
        diffs = diffs[~np.isnan(diffs)]
        timed = [float(r["images_per_s"]) for r in mine if not np.isnan(float(r["images_per_s"]))]
        speed = f"{np.mean(timed):.1f}" if timed else ""
        compared = not is_reference(mine[0]) and diffs.size
        gap = f"{100 * np.mean(diffs):+.2f} ± {50 * (np.max(diffs) - np.min(diffs)):.2f}" if compared else ""
        wins = f"{int(np.sum(diffs > 0))} of {diffs.size}" if compared else ""
        lines.append(f"| {sampler} | {mine[0]['nfe']} | {speed} | "
                     f"{np.mean([float(r['nearness']) for r in mine]):.2f} | "
                     f"{100 * np.mean([float(r['degenerate']) for r in mine]):.1f} | "
                     f"{'not run' if np.isnan(auroc).all() else f'{100 * np.mean(auroc):.2f}'} | {gap} | {wins} |")
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def merge_rows(tables: list[list[dict]]) -> list[dict]:
    """The rows of every table, a later row of the same class, seed and sampler replacing an earlier one: a run that
    reused an earlier run's models repeats its config row, and trains what the earlier one only probed."""
    merged = {(row["class"], row["seed"], row["sampler"]): row for rows in tables for row in rows}
    return list(merged.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="cifar10-jpeg.tar.gz or its unpacked tree")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.py"))
    parser.add_argument("--pretrained", default=None, help="the stand-in backbone (benchmarks/pretrain.py)")
    parser.add_argument("--classes", nargs="+", default=["0", "1", "2", "3", "4"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--samplers", nargs="*", default=["euler_maruyama:50", "ddim:100", "dpm_solver:20"],
                        help="METHOD:STEPS, each with its own detector")
    parser.add_argument("--probe-only", nargs="*", default=["euler_maruyama:1000"],
                        help="METHOD:STEPS measured on the nearness probes only")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "samplers")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="CSV", help="only join earlier samplers.csv files")
    parser.add_argument("--reference", metavar="METHOD:STEPS", help="with --merge: the sampler every other is paired "
                                                                      "with (default: each run's config sampler)")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data and models: checks the script")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.merge:
        rows = merge_rows([read_rows(path) for path in args.merge])
        save_csv(rows, args.out / "samplers.csv")
        table = summary_table(rows, args.reference)
        save_text(table + "\n", args.out / "samplers.md")
        return print(table)

    overrides = list(args.overrides)
    if args.smoke:
        scratch = Path(tempfile.mkdtemp(prefix="fitm-samplers-smoke-"))
        atexit.register(shutil.rmtree, scratch, True)
        args.data, args.out, args.classes, args.seeds = synthetic_cifar_tree(scratch / "data"), scratch, ["0"], [0]
        args.samplers, args.probe_only = ["euler_maruyama:4"], ["ddim:4"]
        overrides += ["training.n_iters=4", "training.snapshot_iters=(2,)", "sampling.steps=3",
                      "detector.epochs=1", "detector.min_steps=2", "detector.arch.depth=1", "model.nf=8"]
    base = apply_overrides(load_config(path=args.config), overrides)
    base.data.root = str(cifar_tree(args.data))
    if args.pretrained:
        base.detector.pretrained = args.pretrained
    validate_config(base, args.config)
    samplers = [parse_sampler(s) for s in args.samplers]
    probe_only = [parse_sampler(s) for s in args.probe_only]
    runtime = Runtime.local(base.device, quiet=args.quiet)
    rows = []
    for name in args.classes:
        for seed in args.seeds:
            config = copy.deepcopy(base)
            config.data.normal_class, config.seed = name, seed
            split = restrict(load_split(config.data), list(PROTOCOL_CLASSES), 0)
            task = stages.Task(run=Run.of(args.out / f"seed{seed}", config), config=config, split=split,
                               runtime=runtime)
            for row in class_rows(task, samplers, probe_only):
                rows.append(row)
                print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in row.items()), flush=True)
            save_csv(rows, args.out / "samplers.csv")  # after every class and seed: a stopped run keeps its rows
            save_text(summary_table(rows) + "\n", args.out / "samplers.md")
    print(summary_table(rows))


if __name__ == "__main__":
    try:
        main()
    except FitmError as e:
        sys.exit(f"samplers: {e}")
