"""Does fitm work on real data? One-class AUROC on the shared CIFAR-10 copy, against the baselines, over seeds.

With --pretrained (the paper's regime, with benchmarks/pretrain.py's stand-in trained on classes 5-9): normal
classes from 0-4, anomalies from the other classes of 0-4 only (never a pretraining class). Without it: all ten
classes one-vs-all, every network from scratch. For each normal class and seed:

- pretrained_knn: kNN (k = 2) on the backbone's features, no fine-tuning (the paper's baseline);
- fitm: end to end (score model, the snapshot the config chooses, the detector fine-tuned on its fakes);
- late_fakes / noised_normals / blurred_normals / cutpaste_normals: the same detector fine-tuned on other "fakes":
  the last snapshot's (fitm's own when the config takes the last, as configs/cifar10_cpu.py does), and
  fakes.source's cheap kinds: Gaussian-noised normals (fakes.noise_std, 0.1 of the range), blurred normals
  (fakes.blur_sigma, 1.5 px), normals with a patch of themselves pasted elsewhere (CutPaste);
- pixel_knn: kNN on raw pixels.

`--study` adds the early-stop study: the detector fine-tuned on every snapshot's fakes, beside the config's choice.
`--train-limit N` keeps the first N normal training images of each class (small sets). A cheap kind of fakes needs no
score model, so it is measured once (`--set fakes.source=cutpaste --variants`, whose fitm column is then CutPaste's)
and joined to every score model's rows on the same backbone with `--merge ... --reference cutpaste_normals=CSV`;
a variant column another run measured on the same backbone joins the same way (`--reference noised_normals=CSV`).

    OMP_NUM_THREADS=1 python benchmarks/quality.py --pretrained runs/pretrained/vit_c10_5to9.pth \\
        --classes 0 1 2 3 4 --seeds 0 1 --study --out runs/quality-pretrained
    python benchmarks/quality.py --merge runs/q-a/quality.csv runs/q-b/quality.csv --out runs/quality
    OMP_NUM_THREADS=1 python benchmarks/quality.py --smoke    # the same code on tiny synthetic data, in seconds

Writes <out>/quality.csv (one row per class and seed), quality.md (mean and spread over seeds, the verdict, the
generate stage's minutes: score model and sampling), study.csv/md, and prints the tables; each class's run folders
under <out> keep every stage, so a rerun redoes only what changed. Needs the shared data
(shared/data/cifar10-jpeg.tar.gz); says so and stops when it is absent.
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_DATA, SMOKE_OVERRIDES, cifar_tree, synthetic_cifar_tree  # noqa: E402

from fitm import stages  # noqa: E402
from fitm.config import apply_overrides, load_config, validate_config  # noqa: E402
from fitm.data import Split, load_split  # noqa: E402
from fitm.data.cheap_fakes import cheap_fakes  # noqa: E402
from fitm.data.cifar import CIFAR10_CLASSES  # noqa: E402
from fitm.detector.backbone import create_backbone  # noqa: E402
from fitm.errors import FitmError  # noqa: E402
from fitm.io import save_csv, save_text  # noqa: E402
from fitm.run import Run  # noqa: E402
from fitm.runtime import Runtime  # noqa: E402
from fitm.sde.train import ema_model, generate_fakes  # noqa: E402

PROTOCOL_CLASSES = CIFAR10_CLASSES[:5]  # with --pretrained: normal and anomalous classes, never pretrained on
CHEAP = {"noised_normals": "noised", "blurred_normals": "blurred", "cutpaste_normals": "cutpaste"}  # fakes.source
COLUMNS = ("fitm", "pretrained_knn", "late_fakes", *CHEAP, "pixel_knn")
TRAINED = ("fitm", "late_fakes", *CHEAP)


def cheap(task: stages.Task, source: str) -> np.ndarray:
    """The config's fakes.source kind of fakes from this class's normal images (fitm/data/cheap_fakes.py)."""
    fakes_cfg = copy.deepcopy(task.config.fakes)
    fakes_cfg.source = source
    return cheap_fakes(task.split.normal_train, fakes_cfg, len(task.split.normal_train), task.config.seed)[0]


def restrict(split: Split, groups, train_limit: int) -> Split:
    """The split with test images of `groups` only (all when None), and the first train_limit normals."""
    keep = np.isin(split.test_groups, groups) if groups is not None else np.ones(len(split.test_labels), bool)
    normal = split.normal_train[:train_limit] if train_limit else split.normal_train
    return Split(normal_train=normal, test_images=split.test_images[keep], test_labels=split.test_labels[keep],
                 test_groups=split.test_groups[keep], test_paths=None, class_name=split.class_name)


def variant(task: stages.Task, name: str) -> stages.Task:
    """The same class, config and data in a folder of the run of its own."""
    return stages.Task(run=Run(task.run.dir / "variants" / name), config=task.config, split=task.split,
                       runtime=task.runtime)


def trained_auroc(task: stages.Task, name: str, fakes: np.ndarray) -> float:
    """The detector fine-tuned against `fakes`, scored by kNN, in the variant folder `name`."""
    v = variant(task, name)
    v.run.open()
    model, summary = stages.detect(v, fakes)
    return stages.evaluate(v, model, summary)["auroc"]


def backbone_auroc(task: stages.Task) -> float:
    """The backbone as loaded (no fine-tuning) scored by kNN, in the variant folder pretrained_knn: the baseline."""
    knn = variant(task, "pretrained_knn")
    knn.run.open()
    task.runtime.seed(task.config.seed)
    backbone = create_backbone(task.config.detector).to(task.runtime.device).eval()
    return stages.evaluate(knn, backbone, {})["auroc"]


def snapshot_fakes(task: stages.Task, step: int, count: int) -> np.ndarray:
    """The fakes of one snapshot, with the config's sampler and seed."""
    model = ema_model(task.run.sde.load_checkpoint(step), task.config, task.runtime.device)
    return generate_fakes(model, task.config, count, task.config.seed, task.runtime)


def class_row(task: stages.Task, study: bool, variants: tuple[str, ...]) -> tuple[dict, list[dict]]:
    clock = time.perf_counter()
    task.run.open()
    fakes = stages.generate(task)
    meta = task.run.fakes_meta()
    nan = float("nan")
    generate_s = task.run.durations().get("generate", {}).get("seconds", nan)  # the score model and its sampling
    model, summary = stages.detect(task, fakes)
    result = stages.evaluate(task, model, summary)
    row = {"class": task.split.class_name, "seed": task.config.seed, "fakes_step": meta.get("step", nan),
           "degenerate": meta["degenerate_fraction"], "nearness": meta["nearness"], "fitm": result["auroc"],
           "pixel_knn": result["pixel_knn_auroc"], "detector_accuracy": summary["final_accuracy"],
           "detector_balanced_accuracy": summary.get("final_balanced_accuracy", nan),  # older runs lack it
           "generate_minutes": generate_s / 60}
    steps = task.run.sde.steps()  # none with a cheap fakes.source: no score model, no late fakes, no study
    if "late_fakes" not in variants:
        row["late_fakes"] = nan
    elif meta["step"] == max(steps):  # the config chose the last snapshot: the same fakes, the same detector
        row["late_fakes"] = row["fitm"]
    else:
        row["late_fakes"] = trained_auroc(task, "late_fakes", snapshot_fakes(task, max(steps), len(fakes)))
    for column, source in CHEAP.items():
        row[column] = trained_auroc(task, column, cheap(task, source)) if column in variants else nan
    row["pretrained_knn"] = backbone_auroc(task)
    rows = []
    if study:
        chosen = meta["step"]
        known = {step: value for step, value in ((max(steps), row["late_fakes"]), (chosen, row["fitm"]))
                 if value == value}  # NaN: a variant not run
        for step in steps:
            auroc = known[step] if step in known else trained_auroc(task, f"study_{step}",
                                                                    snapshot_fakes(task, step, len(fakes)))
            rows.append({"class": row["class"], "seed": row["seed"], "step": step, "auroc": auroc,
                         "chosen": step == chosen})
    row["minutes"] = (time.perf_counter() - clock) / 60
    return row, rows


# --- tables -----------------------------------------------------------------------------------------------

def spread(values: list[float]) -> str:
    """mean ± half the range over seeds, in AUROC points."""
    values = 100 * np.asarray(values, float)
    if np.isnan(values).all():
        return "not run"
    return f"{values.mean():.2f} ± {(values.max() - values.min()) / 2:.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def summary_table(rows: list[dict]) -> str:
    classes = list(dict.fromkeys(r["class"] for r in rows))
    seeds = sorted({int(r["seed"]) for r in rows})
    lines = [f"Mean ± half-range over seeds {', '.join(map(str, seeds))} (AUROC %):", "",
             "| class | " + " | ".join(COLUMNS) + " | degenerate % | detector balanced accuracy | generate minutes |",
             "|---|" + "---:|" * (len(COLUMNS) + 3)]
    means = {c: [] for c in COLUMNS}
    for name in classes:
        mine = [r for r in rows if r["class"] == name]
        cells = [spread([r.get(c, np.nan) for r in mine]) for c in COLUMNS]  # older CSVs lack newer columns
        for c in COLUMNS:
            means[c].append(np.mean([r.get(c, np.nan) for r in mine]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * np.mean([r['degenerate'] for r in mine]):.1f}"
                     f" | {np.mean([r.get('detector_balanced_accuracy', np.nan) for r in mine]):.3f}"
                     f" | {np.mean([r.get('generate_minutes', np.nan) for r in mine]):.1f} |")
    lines.append("| mean | " + " | ".join(f"{100 * np.mean(means[c]):.2f}" for c in COLUMNS) + " | | | |")
    return "\n".join(lines) + "\n\n" + verdict(means, classes) + "\n\n" + margins(rows)


def verdict(means: dict, classes: list[str]) -> str:
    """The issue's bar in words, from the per-class means over seeds."""
    ours = np.asarray(means["fitm"])
    knn = np.asarray(means["pretrained_knn"])
    wins = int((ours > knn).sum())
    lines = [f"fitm's mean AUROC {100 * ours.mean():.2f} vs the backbone's kNN {100 * knn.mean():.2f}: "
             f"{100 * (ours.mean() - knn.mean()):+.2f} points; fitm wins on {wins} of {len(classes)} classes."]
    for c in ("late_fakes", *CHEAP, "pixel_knn"):
        other = np.mean(means[c])
        if np.isnan(other):  # a variant not run (--variants)
            continue
        if c == "late_fakes" and np.array_equal(means[c], ours):  # the config takes the last snapshot
            lines.append("late_fakes are fitm's own fakes (the config takes the last snapshot): nothing to beat.")
            continue
        lines.append(f"fitm {'beats' if ours.mean() > other else 'does NOT beat'} {c} on the mean "
                     f"({100 * ours.mean():.2f} vs {100 * other:.2f}).")
    return "\n".join(lines)


def margins(rows: list[dict]) -> str:
    """fitm minus each baseline, paired by class and seed: the mean over classes per seed, then mean ± half the
    range over seeds, and on how many class-seeds fitm is higher. The cheap fakes' margin is what the score
    model buys; the best of them for each class-seed, chosen after the fact, is the hardest bar."""
    lines = ["| fitm minus | mean over classes, ± half-range over seeds | fitm higher on |", "|---|---:|---:|"]
    lines += [line for c in (*CHEAP, "pretrained_knn") if (line := margins_line(rows, c))]
    if line := margins_line([{**r, "best cheap fake": best_cheap(r)} for r in rows], "best cheap fake"):
        lines.append(line)
    return "\n".join(lines)


def best_cheap(row: dict) -> float:
    """The better of the cheap fakes run for this class-seed; NaN where fewer than two were run."""
    run = [v for c in CHEAP if not np.isnan(v := float(row.get(c, np.nan)))]
    return max(run) if len(run) > 1 else np.nan


def margins_line(rows: list[dict], column: str) -> str:
    """One row of the margins table; empty where no row has the column."""
    by_seed: dict[int, list[float]] = {}
    for r in rows:
        diff = float(r["fitm"]) - float(r.get(column, np.nan))
        if diff == diff:  # NaN: a variant not run
            by_seed.setdefault(int(r["seed"]), []).append(diff)
    if not by_seed:
        return ""
    diffs = np.concatenate(list(by_seed.values()))
    per_seed = 100 * np.array([np.mean(d) for d in by_seed.values()])
    margin = f"{per_seed.mean():+.2f}" + (f" ± {np.ptp(per_seed) / 2:.2f}" if len(per_seed) > 1 else "")
    return f"| {column} | {margin} | {int((diffs > 0).sum())} of {len(diffs)} class-seeds |"


def study_table(rows: list[dict]) -> str:
    lines = ["| class | seed | snapshot step | AUROC | the config chose |", "|---|---:|---:|---:|:---:|"]
    lines += [f"| {r['class']} | {r['seed']} | {r['step']} | {100 * float(r['auroc']):.2f} | "
              f"{'yes' if str(r['chosen']) in ('True', 'true') else ''} |" for r in rows]
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise FitmError(f"{path}: no such file (expected a quality.csv of an earlier run)")
    with open(path, newline="") as f:
        return [{k: (v if k == "class" else float(v)) for k, v in row.items() if v != ""}  # empty: a column added later
                for row in csv.DictReader(f)]


def fill_from_reference(rows: list[dict], spec: str) -> None:
    """--reference COLUMN=CSV: a cheap fake's AUROCs, measured once, beside every score model's rows. They pair
    only on the same backbone, so the two files' kNN AUROCs must agree class-seed by class-seed. The CSV is a run
    with that fakes.source (its fitm is the cheap fake's) or a score model's run that measured COLUMN as a variant."""
    column, _, path = spec.partition("=")
    if column not in CHEAP or not path:
        raise FitmError(f"--reference {spec!r}: expected COLUMN=CSV with COLUMN one of {', '.join(CHEAP)}")
    reference = {(r["class"], int(r["seed"])): r for r in read_rows(Path(path))}
    for row in rows:
        other = reference.get((row["class"], int(row["seed"])))
        if other is None:
            raise FitmError(f"--reference {path}: no row for {row['class']} seed {int(row['seed'])}")
        if abs(other["pretrained_knn"] - row["pretrained_knn"]) > 1e-9:
            raise FitmError(f"--reference {path}: {row['class']} seed {int(row['seed'])} has the backbone's kNN "
                            f"{100 * other['pretrained_knn']:.2f} against {100 * row['pretrained_knn']:.2f}: "
                            "another backbone, so the rows do not pair")
        if not np.isnan(other.get(column, np.nan)):
            row[column] = other[column]
        elif np.isnan(other.get("fakes_step", np.nan)):  # no score model: a cheap fakes.source's run
            row[column] = other["fitm"]
        else:
            raise FitmError(f"--reference {path}: {row['class']} seed {int(row['seed'])} is a score model's run "
                            f"without {column}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="cifar10-jpeg.tar.gz or its unpacked tree")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.py"))
    parser.add_argument("--pretrained", default=None, help="weights for the backbone: the pretrained protocol")
    parser.add_argument("--classes", nargs="+", default=None, help="indices or names (default: 0-4 with "
                                                                   "--pretrained, else all ten)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1; with --merge, the seeds "
                                                                             "kept (default: all)")
    parser.add_argument("--train-limit", type=int, default=0, help="keep the first N normal training images")
    parser.add_argument("--study", action="store_true", help="the early-stop study on every class and seed")
    parser.add_argument("--variants", nargs="*", default=list(TRAINED[1:]), choices=list(TRAINED[1:]),
                        help="which other kinds of fakes to train on (default: all; none with no names)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="CSV", help="only join earlier quality.csv files")
    parser.add_argument("--reference", action="append", default=[], metavar="COLUMN=CSV",
                        help="with --merge: a quality.csv run with that cheap column's fakes.source (its fitm) or "
                             "one that measured COLUMN fills COLUMN of the rows of the same class and seed")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="airplane, seed 0, --study (with late_fakes), on tiny "
                                                             "synthetic data and a few steps, in a temporary "
                                                             "folder: checks the script, measures nothing")
    args = parser.parse_args()
    if args.reference and not args.merge:
        parser.error("--reference joins rows of earlier runs: it needs --merge")
    if not args.smoke:
        return measure(args)
    with tempfile.TemporaryDirectory() as tmp:
        args.data, args.out = synthetic_cifar_tree(Path(tmp) / "data"), Path(tmp) / "out"
        args.classes, args.seeds, args.quiet = ["0"], [0], True
        args.study = "late_fakes" in args.variants  # a cheap fakes.source runs without either
        args.overrides = SMOKE_OVERRIDES + args.overrides
        measure(args)
        args.merge = [args.out / "quality.csv"]
        measure(args)


def measure(args) -> None:
    if args.merge:
        rows = [row for path in args.merge for row in read_rows(path)
                if args.seeds is None or int(row["seed"]) in args.seeds]
        for spec in args.reference:
            fill_from_reference(rows, spec)
        save_csv(rows, args.out / "quality.csv")
        table = summary_table(rows)
        save_text(table + "\n", args.out / "quality.md")
        return print(table)

    base = apply_overrides(load_config(path=args.config), args.overrides)
    base.data.root = str(cifar_tree(args.data))
    if args.pretrained:
        base.detector.pretrained = args.pretrained
    validate_config(base, args.config)
    if base.fakes.source != "sde" and (args.study or "late_fakes" in args.variants):
        raise FitmError(f"fakes.source={base.fakes.source} trains no score model: --study and the late_fakes "
                        "variant need one (pass --variants without late_fakes)")
    runtime = Runtime.local(base.device, quiet=args.quiet)
    groups = list(PROTOCOL_CLASSES) if args.pretrained else None
    classes = args.classes or ([str(k) for k in range(5)] if args.pretrained else [str(k) for k in range(10)])
    rows, studies = [], []
    for name in classes:
        for seed in args.seeds or [0, 1]:
            config = copy.deepcopy(base)
            config.data.normal_class, config.seed = name, seed
            split = restrict(load_split(config.data), groups, args.train_limit)
            if args.pretrained and split.class_name not in PROTOCOL_CLASSES:
                raise FitmError(f"--classes {name}: with --pretrained the normal classes are 0-4")
            task = stages.Task(run=Run.of(args.out / f"seed{seed}", config), config=config, split=split,
                               runtime=runtime)
            print(f"class {split.class_name}, seed {seed}: {len(split.normal_train)} normal training images, "
                  f"{len(split.test_labels)} test images", flush=True)
            row, study = class_row(task, args.study, tuple(args.variants))
            rows.append(row)
            studies += study
            print("  " + ", ".join(f"{k} {100 * v:.2f}" if k in COLUMNS else f"{k} {v}" for k, v in row.items()),
                  flush=True)
            # Tables are rewritten after every class and seed, so a long run that is stopped keeps what it measured.
            save_csv(rows, args.out / "quality.csv")
            save_text(summary_table(rows) + "\n", args.out / "quality.md")
            if studies:
                save_csv(studies, args.out / "study.csv")
                save_text(study_table(studies) + "\n", args.out / "study.md")
    print(summary_table(rows))
    if studies:
        print(study_table(studies))


if __name__ == "__main__":
    try:
        main()
    except FitmError as e:
        sys.exit(f"quality: {e}")
