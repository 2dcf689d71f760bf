"""Does fitm work on real data? One-vs-all AUROC on the shared CIFAR-10 copy, from scratch, against baselines.

For each normal class, the same discriminator is trained against four kinds of fakes (fitm's early-stopped
score-model fakes, fakes from the last checkpoint, Gaussian-noised normals, blurred normals), and two kNN
baselines need no training (the same ViT untrained; raw pixels). `--study` adds the early-stop study on the
first class: the detector trained on the fakes of every snapshot, and what `fakes.checkpoint='auto'` picks.

    python benchmarks/quality.py --classes 0 1 2              # CPU configs (configs/cifar10_cpu.py)
    python benchmarks/quality.py --classes 0 --study
    python benchmarks/quality.py --config configs/cifar10.py --set detector.pretrained=none ...   # on a GPU

Writes <out>/quality.csv, quality.md (and study.csv, study.md, study.png) and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2.functional import gaussian_blur

from fitm import stages
from fitm.config import apply_overrides, load_config
from fitm.data import load_split
from fitm.detector.backbone import create_backbone
from fitm.errors import FitmError
from fitm.io import save_csv, save_npy, save_text
from fitm.runtime import resolve_device, seed_everything, set_quiet
from fitm.sde.early_stop import choose_auto
from fitm.sde.train import generate_fakes

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

    row = {"class": run.split.class_name}
    clock = time.perf_counter()
    result = stages.evaluate(run, stages.detect(run, fakes))
    row["fitm"], row["pixel_knn"] = result["auroc"], result["pixel_knn_auroc"]
    timings["detect_s"] = time.perf_counter() - clock

    last = sorted(run.dir.glob("sde/ckpt_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))[-1]
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


def early_stop_study(run: stages.Run, out: Path) -> list[dict]:
    """AUROC of the detector trained on each snapshot's fakes, beside the 'auto' signal and choice."""
    checkpoints = sorted(run.dir.glob("sde/ckpt_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))
    count = run.config.fakes.count or len(run.split.normal_train)
    _, signal = choose_auto(checkpoints, run.split.normal_train, run.config, run.device)
    rows = []
    for path, sig in zip(checkpoints, signal):
        fakes = generate_fakes(path, run.config, count, run.config.seed, run.device)
        rows.append({"step": sig["step"], "nearness_ratio": sig["ratio"], "auto_choice": sig["chosen"],
                     "auroc": trained_auroc(run, f"study_{sig['step']}", fakes)})
        print(f"  study step {sig['step']}: ratio {sig['ratio']:.3f}, AUROC {100 * rows[-1]['auroc']:.2f}",
              flush=True)
    save_csv(rows, out / "study.csv")
    lines = ["| checkpoint step | nearness ratio | AUROC | auto's choice |", "|---:|---:|---:|:---:|"]
    lines += [f"| {r['step']} | {r['nearness_ratio']:.3f} | {100 * r['auroc']:.2f} | {'yes' if r['auto_choice'] else ''} |"
              for r in rows]
    save_text("\n".join(lines) + "\n", out / "study.md")
    study_picture(run.dir, rows, out / "study.png")
    print("\n".join(lines))
    return rows


def study_picture(run_dir: Path, rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    from fitm.report import _save_figure

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes[0], rows):
        ax.imshow(plt.imread(run_dir / "sde" / f"samples_{r['step']}.png"))
        ax.set_title(f"step {r['step']}\nratio {r['nearness_ratio']:.2f}, AUROC {100 * r['auroc']:.1f}"
                     + ("\n(auto)" if r["auto_choice"] else ""), fontsize=9)
        ax.axis("off")
    _save_figure(fig, path)


def markdown(rows: list[dict]) -> str:
    head = ["class", *VARIANTS, "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([str(r["class"])] + [f"{100 * r[v]:.2f}" for v in VARIANTS]
                                       + [f"{r['minutes']:.1f}" if r["minutes"] == r["minutes"] else ""]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="cifar10-jpeg.tar.gz or its unpacked tree")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.py"))
    parser.add_argument("--classes", nargs="+", default=["0", "1", "2"], help="indices or names; 'all'")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--study", action="store_true", help="the early-stop study on the first class")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    set_quiet(args.quiet)

    root = cifar_tree(args.data)
    rows = []
    for name in args.classes if args.classes != ["all"] else [str(i) for i in range(10)]:
        config = apply_overrides(load_config(path=args.config), args.overrides)
        config.data.root, config.data.normal_class = str(root), name
        split = load_split(config.data)
        run = stages.Run(dir=stages.run_dir(args.out, config), config=config, split=split,
                         device=resolve_device(config.device))
        stages.save_run_config(run)
        print(f"class {split.class_name}: {len(split.normal_train)} normal training images", flush=True)
        rows.append(class_row(run))
        print("  " + ", ".join(f"{k} {100 * v:.2f}" if k in VARIANTS else f"{k} {v}" for k, v in rows[-1].items()),
              flush=True)
        if args.study and len(rows) == 1:
            early_stop_study(run, args.out)

    mean = {"class": "mean", **{v: float(np.mean([r[v] for r in rows])) for v in VARIANTS}, "minutes": float("nan")}
    table = markdown(rows + [mean])
    save_csv(rows + [mean], args.out / "quality.csv")
    save_text(table + "\n", args.out / "quality.md")
    print(table)


if __name__ == "__main__":
    try:
        main()
    except FitmError as e:
        sys.exit(f"quality: {e}")
