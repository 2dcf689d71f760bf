"""Scoring speed of a finished run on the CPU: `fitm predict` (PyTorch) against the exported ONNX file
(onnxruntime), on the same images, each measured in this run.

    OMP_NUM_THREADS=1 python benchmarks/predict.py --run runs/digits/0 --images 2000
    OMP_NUM_THREADS=1 python benchmarks/predict.py --smoke   # a few-step digits run of its own, in seconds

Writes --images synthetic PNGs of the run's size to a temporary folder, then times: the whole `fitm predict`
path (load the run, read the files, score, verdicts), PyTorch scoring of the images already in memory, the
export, and onnxruntime on the same in-memory images and on the files (read with PIL).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import fitm
from fitm.data.images import read_image
from fitm.cli import cli
from fitm.export import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE_OVERRIDES  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished run folder (fitm pipeline/detect)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256, help="onnxruntime batch")
    parser.add_argument("--smoke", action="store_true", help="64 images scored by a digits run of a few steps, made "
                                                             "in a temporary folder: checks the script, not speed")
    args = parser.parse_args()
    if not args.smoke:
        if args.run is None:
            parser.error("--run is required (or --smoke)")
        return measure(args)
    with tempfile.TemporaryDirectory() as tmp:
        cli.main(["pipeline", "--dataset", "digits", "--class", "0", "--out", tmp, "--quiet",
                  *[part for o in SMOKE_OVERRIDES for part in ("--set", o)]], standalone_mode=False)
        args.run, args.images, args.batch = Path(tmp) / "digits" / "0", 64, 32
        measure(args)


def measure(args) -> None:
    import onnxruntime as ort

    detector = fitm.Detector.load(args.run, quiet=True)
    size = detector._image_shape[0]
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        files = sorted(folder.glob("*.png"))
        detector.score(images[:64])  # warm-up
        (torch_scores, _), whole = timed(lambda: fitm.Detector.load(args.run, quiet=True).predict(files))
        _, in_memory = timed(lambda: detector.score(images))
        onnx_path, export_s = timed(lambda: export_onnx(detector, Path(tmp) / "detector.onnx"))
        session = ort.InferenceSession(str(onnx_path))
        run = lambda batch: np.concatenate([session.run(None, {"images": batch[i:i + args.batch]})[0]
                                            for i in range(0, len(batch), args.batch)])
        run(images[:64])  # warm-up
        onnx_scores, onnx_memory = timed(lambda: run(images))
        _, onnx_files = timed(lambda: run(np.stack([read_image(f) for f in files])))
    agree = np.max(np.abs(onnx_scores - torch_scores) / np.maximum(np.abs(torch_scores), 1e-12))
    print(f"run {args.run} ({size} px, {detector.config.detector.backbone}), {args.images} images, CPU")
    print(f"fitm predict, files (load, read, score)   {args.images / whole:9.1f} images/s")
    print(f"PyTorch, images in memory                 {args.images / in_memory:9.1f} images/s")
    print(f"onnxruntime, images in memory             {args.images / onnx_memory:9.1f} images/s   "
          f"({in_memory / onnx_memory:.2f}x PyTorch)")
    print(f"onnxruntime, files (PIL read + score)     {args.images / onnx_files:9.1f} images/s   "
          f"({whole / onnx_files:.2f}x fitm predict)")
    print(f"export took {export_s:.1f} s; largest relative score difference ONNX vs PyTorch {agree:.2e}")


if __name__ == "__main__":
    main()
