"""Does fitm work on real data? One-vs-all AUROC on the shared CIFAR-10 copy (or digits), from scratch,
against baselines.

For each normal class, the same discriminator is trained against four kinds of fakes (fitm's early-stopped
score-model fakes, fakes from the last checkpoint, Gaussian-noised normals, blurred normals), and two kNN
baselines need no training (the same ViT untrained; raw pixels). `--study` adds the early-stop study on
each class: the detector trained on the fakes of every snapshot, and what `fakes.checkpoint='auto'` picks.

    python benchmarks/quality.py --classes 0 1 2              # CPU configs (configs/cifar10_cpu.py)
    python benchmarks/quality.py --classes 0 --study
    python benchmarks/quality.py --config configs/digits.py --classes all --study --out runs/quality-digits
    python benchmarks/quality.py --config configs/cifar10.py --set detector.pretrained=none ...   # on a GPU
    python benchmarks/quality.py --merge runs/q1/quality.csv runs/q2/quality.csv --out runs/quality

Writes <out>/quality.csv, quality.md (and study.csv, study.md, study.png) and prints the tables; the run
directories under <out> keep every stage, so a rerun redoes only what changed.
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2.functional import gaussian_blur

from fitm import stages
from fitm.config import apply_overrides, load_config, section
from fitm.data import class_names, load_split
from fitm.detector.backbone import create_backbone
from fitm.errors import FitmError
from fitm.io import fingerprint, load_json, save_csv, save_json, save_npy, save_text
from fitm.runtime import resolve_device, seed_everything, set_quiet
from fitm.sde.early_stop import choose_auto
from fitm.sde.train import checkpoint_step, generate_fakes

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
NOISE_STD = 0.1 * 255  # Gaussian-noised normals: clearly noisy, structure intact
BLUR_SIGMA = 1.5  # blurred normals: shapes intact, detail gone
VARIANTS = ("fitm", "late_fakes", "noised_normals", "blurred_normals", "untrained_vit_knn", "pixel_knn")


def cifar_tree(path: Path) -> Path:
    """The image-folder tree; a .tar.gz is unpacked once beside the system's temporary files."""
    if path.is_dir():
        return path
    if not path.is_file():
        sys.exit(f"quality: the CIFAR-10 data is not here: {path} is absent. This benchmark needs the shared "
                 "CIFAR-10 JPEG copy (shared/data/cifar10-jpeg.tar.gz) or an unpacked train/<class>/ tree; "
                 "pass --data PATH. Nothing was measured.")
    root = Path(tempfile.gettempdir()) / "fitm-cifar10-jpeg"
    if not (root / "train").is_dir():
        print(f"unpacking {path} to {root} ...", flush=True)
        with tarfile.open(path) as tar:
            tar.extractall(root.with_suffix(".partial"), filter="data")
        inner = next(p.parent for p in root.with_suffix(".partial").rglob("train") if p.is_dir())
        inner.rename(root)
    return root


def noised(images: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, NOISE_STD, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


def blurred(images: np.ndarray) -> np.ndarray:
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    kernel = 2 * int(3 * BLUR_SIGMA) + 1
    return gaussian_blur(batch, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA]).permute(0, 2, 3, 1).contiguous().numpy()


def trained_auroc(run: stages.Run, name: str, fakes: np.ndarray) -> float:
    """The same discriminator and kNN scoring, trained against `fakes`, in its own run directory."""
    variant = stages.Run(dir=run.dir / "variants" / name, config=run.config, split=run.split, device=run.device)
    save_npy(fakes, variant.dir / "fakes.npy")
    return stages.evaluate(variant, stages.detect(variant, fakes))["auroc"]


def class_row(run: stages.Run) -> dict:
    timings = {}
    clock = time.perf_counter()
    fakes = stages.generate(run)
    timings["generate_s"] = time.perf_counter() - clock

    fakes_checkpoint = load_json(run.dir / "fakes.json")["checkpoint"]
    row = {"class": run.split.class_name, "fakes_step": checkpoint_step(fakes_checkpoint)}
    clock = time.perf_counter()
    result = stages.evaluate(run, stages.detect(run, fakes))
    row["fitm"], row["pixel_knn"] = result["auroc"], result["pixel_knn_auroc"]
    timings["detect_s"] = time.perf_counter() - clock

    last = sorted(run.dir.glob("sde/ckpt_*.pt"), key=checkpoint_step)[-1]
    late = generate_fakes(last, run.config, len(fakes), run.config.seed, run.device)
    row["late_fakes"] = trained_auroc(run, "late_fakes", late)
    row["noised_normals"] = trained_auroc(run, "noised_normals", noised(run.split.normal_train, run.config.seed))
    row["blurred_normals"] = trained_auroc(run, "blurred_normals", blurred(run.split.normal_train))

    untrained = stages.Run(dir=run.dir / "variants" / "untrained_vit_knn", config=run.config, split=run.split,
                           device=run.device)
    seed_everything(run.config.seed)
    row["untrained_vit_knn"] = stages.evaluate(untrained, create_backbone(run.config.detector).to(run.device).eval())[
        "auroc"]
    row["minutes"] = (time.perf_counter() - clock + timings["generate_s"]) / 60
    return row


def early_stop_study(run: stages.Run) -> list[dict]:
    """AUROC of the detector trained on each snapshot's fakes, beside the 'auto' signal and choice."""
    checkpoints = sorted(run.dir.glob("sde/ckpt_*.pt"), key=checkpoint_step)
    count = run.config.fakes.count or len(run.split.normal_train)
    _, signal = choose_auto(checkpoints, run.split.normal_train, run.config, run.device)
    rows = []
    for path, sig in zip(checkpoints, signal):
        fakes = snapshot_fakes(run, path, count)
        rows.append({"class": run.split.class_name, **sig, "auroc": trained_auroc(run, f"study_{sig['step']}", fakes)})
        print(f"  study step {sig['step']}: nearness {sig['nearness']:.3f}, AUROC {100 * rows[-1]['auroc']:.2f}",
              flush=True)
    return rows


def save_study(studies: list[list[dict]], run_dirs: list[Path], out: Path) -> str:
    rows = [row for study in studies for row in study]
    save_csv(rows, out / "study.csv")
    lines = ["| class | checkpoint step | closeness | coverage | nearness | AUROC | auto's choice |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    lines += [f"| {r['class']} | {r['step']} | {r['closeness']:.3f} | {r['coverage']:.3f} | {r['nearness']:.3f} | "
              f"{100 * r['auroc']:.2f} | {'yes' if r['chosen'] else ''} |" for r in rows]
    save_text("\n".join(lines) + "\n", out / "study.md")
    study_picture(studies, run_dirs, out / "study.png")
    return "\n".join(lines)


def snapshot_fakes(run: stages.Run, checkpoint: Path, count: int) -> np.ndarray:
    """The study's fakes of one snapshot, sampled once and kept beside its detector for reruns."""
    cache = run.dir / "variants" / f"study_{checkpoint_step(checkpoint)}" / "fakes.npy"
    config = run.config
    inputs = fingerprint(section(config, "seed", "sde", "model", "training", "sampling"), run.data_key, count)
    if cache.exists() and load_json(cache.with_suffix(".json")).get("inputs") == inputs:
        return np.load(cache)
    fakes = generate_fakes(checkpoint, config, count, config.seed, run.device)
    save_npy(fakes, cache)
    save_json({"inputs": inputs}, cache.with_suffix(".json"))
    return fakes


def study_picture(studies: list[list[dict]], run_dirs: list[Path], path: Path) -> None:
    """Each studied class's snapshot sample grids side by side, titled with the signal and the AUROC."""
    import matplotlib.pyplot as plt

    from fitm.report import _save_figure

    columns = max(len(study) for study in studies)
    fig, axes = plt.subplots(len(studies), columns, figsize=(3.2 * columns, 3.6 * len(studies)), squeeze=False)
    for ax_row, study, run_dir in zip(axes, studies, run_dirs):
        for ax in ax_row:
            ax.axis("off")
        for ax, r in zip(ax_row, study):
            ax.imshow(plt.imread(run_dir / "sde" / f"samples_{r['step']}.png"))
            ax.set_title(f"{r['class']}, step {r['step']}\nnearness {r['nearness']:.2f}, AUROC {100 * r['auroc']:.1f}"
                         + ("\n(auto)" if r["chosen"] else ""), fontsize=9)
    _save_figure(fig, path)


def markdown(rows: list[dict]) -> str:
    head = ["class", "fakes' step", *VARIANTS, "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["class"]), str(r.get("fakes_step", ""))] + [f"{100 * r[v]:.2f}" for v in VARIANTS]
        cells.append(f"{r['minutes']:.1f}" if r["minutes"] == r["minutes"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_table(rows: list[dict], out: Path) -> str:
    rows = [r for r in rows if r["class"] != "mean"]
    mean = {"class": "mean", **{v: float(np.mean([float(r[v]) for r in rows])) for v in VARIANTS},
            "minutes": float("nan")}
    table = markdown(rows + [mean]) + "\n\n" + verdict(mean, len(rows))
    save_csv(rows + [mean], out / "quality.csv")
    save_text(table + "\n", out / "quality.md")
    return table


def verdict(mean: dict, n_classes: int) -> str:
    """The issue's bar in words: does fitm's mean beat each baseline's?"""
    ours = mean["fitm"]
    said = [f"{'beats' if ours > mean[v] else 'does NOT beat'} {v} ({100 * mean[v]:.2f})" for v in VARIANTS[1:]]
    return f"Over {n_classes} classes fitm's mean AUROC ({100 * ours:.2f}) " + "; ".join(said) + "."


def read_results(path: Path) -> list[dict]:
    """Rows from a quality.csv, or from the finished class directories of an --out that was stopped before
    writing one (their minutes are not recorded)."""
    if path.is_file():
        with open(path, newline="") as f:
            return [{k: v if k in ("class", "fakes_step") else float(v) for k, v in row.items()}
                    for row in csv.DictReader(f)]
    finished = sorted(p.parents[2] for p in path.glob("*/*/variants/untrained_vit_knn/metrics.json"))
    if not finished:
        raise FitmError(f"--merge {path}: expected a quality.csv or an --out directory with finished classes")
    return [class_row_from_dir(d) for d in finished]


def class_row_from_dir(class_dir: Path) -> dict:
    main_metrics = load_json(class_dir / "metrics.json")
    variant = lambda name: load_json(class_dir / "variants" / name / "metrics.json")["auroc"]
    fakes_step = checkpoint_step(load_json(class_dir / "fakes.json")["checkpoint"])
    return {"class": main_metrics["class"], "fakes_step": fakes_step, "fitm": main_metrics["auroc"],
            "pixel_knn": main_metrics["pixel_knn_auroc"],
            **{name: variant(name) for name in VARIANTS[1:5]}, "minutes": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="cifar10-jpeg.tar.gz or its unpacked tree")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.py"))
    parser.add_argument("--classes", nargs="+", default=["0", "1", "2"], help="indices or names; 'all'")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--study", action="store_true", help="the early-stop study on every class")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="CSV",
                        help="only join earlier runs' quality.csv files (or --out directories) into one table in --out")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    set_quiet(args.quiet)
    if args.merge:
        return print(save_table([row for path in args.merge for row in read_results(path)], args.out))

    base = apply_overrides(load_config(path=args.config), args.overrides)
    if base.data.name == "cifar10":
        base.data.root = str(cifar_tree(args.data))
    rows, studies, run_dirs = [], [], []
    for name in args.classes if args.classes != ["all"] else class_names(base.data):
        config = copy.deepcopy(base)
        config.data.normal_class = name
        split = load_split(config.data)
        run = stages.Run(dir=stages.run_dir(args.out, config), config=config, split=split,
                         device=resolve_device(config.device))
        stages.save_run_config(run)
        print(f"class {split.class_name}: {len(split.normal_train)} normal training images", flush=True)
        rows.append(class_row(run))
        print("  " + ", ".join(f"{k} {100 * v:.2f}" if k in VARIANTS else f"{k} {v}" for k, v in rows[-1].items()),
              flush=True)
        if args.study:
            studies.append(early_stop_study(run))
            run_dirs.append(run.dir)
        # Tables are rewritten after every class, so a long run that is stopped keeps what it measured.
        study = save_study(studies, run_dirs, args.out) if studies else ""
        table = save_table(rows, args.out)
    print(study, table, sep="\n")


if __name__ == "__main__":
    try:
        main()
    except FitmError as e:
        sys.exit(f"quality: {e}")
