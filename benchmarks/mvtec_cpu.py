"""How long configs/mvtec_cpu.py takes for one MVTec AD category on this CPU, measured on a synthetic category with
the counts and image size of MVTec's largest common one (bottle: 209 normal training images, 83 test images of
900 x 900 px; the real data is not on these machines).

    python benchmarks/mvtec_cpu.py                    # all cores
    OMP_NUM_THREADS=2 python benchmarks/mvtec_cpu.py --train 400
    OMP_NUM_THREADS=1 python benchmarks/mvtec_cpu.py --smoke     # 8 images of 64 px, a few steps: checks the script

Prints the minutes of the whole `fitm pipeline` and of its stages (from fitm.log), and the pixel AUROC and AUPRO
of its anomaly maps against the masks of the pasted blots: a check that the maps run and find planted defects at
this config's 32 px, not a figure for MVTec AD (its real defects are subtler; its image AUROC means nothing here and
is not printed).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SMOKE_OVERRIDES  # noqa: E402

TEST_GROUPS = {"good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}


def synthetic_category(root: Path, n_train: int, size: int, seed: int = 0) -> None:
    """Smooth images (a disc on a shaded background), with a dark blot on the defective test images and its mask
    in ground_truth/<defect>/<name>_mask.png, as MVTec AD lays them out."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size

    def image(defect: bool) -> tuple[np.ndarray, np.ndarray]:
        cy, cx, r = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.25, 0.3)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2)[..., None]
        pixels = np.where(disc, rng.uniform(90, 140, 3), 200 + 30 * yy[..., None])
        blot = np.zeros((size, size), bool)
        if defect:
            by, bx = rng.uniform(0.3, 0.7, 2)
            blot = (yy - by) ** 2 + (xx - bx) ** 2 < 0.002
            pixels[blot] = 20
        return pixels.astype(np.uint8), blot

    for folder, count, defect in [("train/good", n_train, False)] + [(f"test/{g}", n, g != "good")
                                                                      for g, n in TEST_GROUPS.items()]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        masks = root / "ground_truth" / Path(folder).name
        for i in range(count):
            pixels, blot = image(defect)
            Image.fromarray(pixels).save(root / folder / f"{i:03d}.png")
            if defect:
                masks.mkdir(parents=True, exist_ok=True)
                Image.fromarray(blot.astype(np.uint8) * 255).save(masks / f"{i:03d}_mask.png")


def stage_minutes(log: str) -> dict[str, float]:
    """Minutes between the log lines that open and close each stage."""
    stamps = [(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"), line) for line in log.splitlines()
              if re.match(r"\d{4}-\d\d-\d\d ", line)]
    start = stamps[0][0]
    generate = next(t for t, line in stamps if "generate: wrote" in line)
    detect = next(t for t, line in stamps if "detect: saved" in line)
    return {"generate": (generate - start).total_seconds() / 60, "detect": (detect - generate).total_seconds() / 60,
            "evaluate and report": (stamps[-1][0] - detect).total_seconds() / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=209, help="normal training images (MVTec: 60-391)")
    parser.add_argument("--size", type=int, default=900, help="side of the synthetic images")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--smoke", action="store_true", help="8 training images of 64 px and a few steps: checks "
                                                             "the script, measures nothing")
    args = parser.parse_args()
    if args.smoke:
        args.train, args.size, args.overrides = 8, 64, SMOKE_OVERRIDES + args.overrides
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mvtec"
        synthetic_category(root / "bottle", args.train, args.size)
        start = time.perf_counter()
        command = [sys.executable, "-m", "fitm", "pipeline", "--config", str(REPO / "configs" / "mvtec_cpu.py"),
                   "--class", "bottle", "--data-root", str(root), "--out", str(Path(tmp) / "runs"), "--quiet",
                   *[part for o in args.overrides for part in ("--set", o)]]
        subprocess.run(command, check=True, capture_output=True, text=True)
        minutes = (time.perf_counter() - start) / 60
        run = Path(tmp) / "runs" / "mvtec" / "bottle"
        parts = stage_minutes((run / "fitm.log").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
    print(f"configs/mvtec_cpu.py on a synthetic category: {args.train} normal training images, "
          f"{sum(TEST_GROUPS.values())} test images, {args.size} px")
    print(f"whole `fitm pipeline`: {minutes:.1f} min (" + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + ")")
    print(f"anomaly maps against the blots' masks: pixel AUROC {100 * metrics['pixel_auroc']:.2f}, AUPRO (FPR up to "
          f"0.3) {100 * metrics['aupro']:.2f}")


if __name__ == "__main__":
    main()
