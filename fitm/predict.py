"""Using a finished run: score new images with its detector, and redraw its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fitm import report
from fitm.data import list_images, load_split, read_images
from fitm.data.images import read_image
from fitm.detector.backbone import create_architecture
from fitm.knn import knn_scores
from fitm.run import Run
from fitm.detector.train import extract_features
from fitm.errors import FitmError
from fitm.io import save_csv
from fitm.runtime import Runtime, log


def _image_paths(paths: list[Path]) -> list[Path]:
    found = []
    for p in paths:
        if p.is_dir():
            found += list_images(p)
        elif p.is_file():
            found.append(p)
        else:
            raise FitmError(f"{p}: no such file or folder")
    return found


def _read_exact(paths: list[Path], shape: tuple[int, int, int]) -> np.ndarray:
    """Images at their own size, converted to 8-bit RGB; refuse any whose size differs from the run's."""
    images = []
    for p in paths:
        array = read_image(p)
        if array.shape[:2] != tuple(shape[:2]):
            raise FitmError(f"{p}: {array.shape[0]}x{array.shape[1]}, but this run's images are {shape[0]}x{shape[1]} "
                            "(pass --resize to resize them)")
        images.append(array)
    return np.stack(images)


def predict(run_dir: Path, paths: list[Path], threshold: float | None, resize: bool, csv_path: Path,
            quiet: bool = False):
    """One row per image: path, score, verdict (anomalous when score > threshold)."""
    if csv_path.is_dir():
        raise FitmError(f"--csv {csv_path}: is a folder (expected the path of the CSV file to write)")
    run = Run(run_dir)
    config = run.load_config()
    saved = run.load_detector()
    if saved is None:
        raise FitmError(f"--run {run_dir}: no readable trained detector (detector/model.pt); run `fitm detect` or "
                        "`fitm pipeline` first")
    bank = run.load_bank()
    used = float(bank["threshold"]) if threshold is None else threshold
    if not np.isfinite(used):
        raise FitmError(f"--run {run_dir}: the run has no threshold (made by an older fitm); pass --threshold")
    shape = tuple(int(v) for v in bank["image_shape"])

    files = _image_paths(paths)
    images = read_images(files, shape[0]) if resize else _read_exact(files, shape)

    runtime = Runtime.local(config.device, quiet)
    model = create_architecture(config.detector)
    model.load_state_dict(saved["state_dict"])
    features = extract_features(model, images, config.detector, runtime)
    scores = knn_scores(features, bank["features"].to(runtime.device), config.detector.k).cpu().numpy()
    if not np.isfinite(scores).all():
        raise FitmError(f"--run {run_dir}: the detector gives non-finite scores (damaged weights); run `fitm detect "
                        "--force` to retrain it")

    rows = [
        {"path": str(p), "score": float(s), "verdict": "anomalous" if s > used else "normal"}
        for p, s in zip(files, scores)
    ]
    try:
        save_csv(rows, csv_path)
    except OSError as e:
        raise FitmError(f"--csv {csv_path}: cannot be written ({e.strerror or e})") from None
    log.info("predict: %d images scored, written to %s", len(rows), csv_path)
    return rows, used


def redraw_report(run_dir: Path) -> Path:
    """Redraw a run's pictures; the test images come from its dataset when that can still be read."""
    run = Run(run_dir)
    run.load_metrics()
    config = run.load_config()
    try:
        test_images = load_split(config.data).test_images
    except FitmError as e:
        log.warning("report: dataset not readable (%s); extremes.png left as it is", e)
        test_images = None
    report.draw(run, test_images)
    return run.path("report.html")
