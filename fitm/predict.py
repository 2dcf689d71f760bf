"""Using a finished run: score new images with its detector, and redraw its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fitm import report
from fitm.api import Detector
from fitm.config import finite_number
from fitm.data import list_images, load_split
from fitm.data.images import read_image
from fitm.errors import FitmError
from fitm.io import atomic_path, save_csv, save_npy
from fitm.run import Run, refuse_artifact
from fitm.runtime import log


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


def predict(run_dir: Path, paths: list[Path], threshold: float | None, resize: bool, csv_path: Path,
            quiet: bool = False, maps_dir: Path | None = None, npy: bool = False):
    """One row per image: path, score, verdict (anomalous when score > threshold), also written to csv_path; with
    maps_dir, each image's anomaly map too (a heatmap PNG, and the raw .npy with `npy`), its path in the row."""
    if threshold is not None:
        threshold = finite_number(threshold, "--threshold")
    if csv_path.is_dir():
        raise FitmError(f"--csv {csv_path}: is a folder (expected the path of the CSV file to write)")
    refuse_artifact(csv_path, "--csv", own=("predictions.csv",))
    if npy and maps_dir is None:
        raise FitmError("--npy: writes the raw maps beside the heatmaps of --maps DIR; pass --maps DIR too")
    if maps_dir is not None and maps_dir.exists() and not maps_dir.is_dir():
        raise FitmError(f"--maps {maps_dir}: is a file (expected a folder to write the heatmaps to)")
    detector = Detector.load(run_dir, quiet=quiet)
    files = _image_paths(paths)
    images = detector._images(files, "images", resize)
    scores, anomalous = detector.predict(images, threshold)
    rows = [{"path": str(p), "score": float(s), "verdict": "anomalous" if a else "normal"}
            for p, s, a in zip(files, scores, anomalous)]
    if maps_dir is not None:
        for row, written in zip(rows, save_maps(detector.anomaly_map(images), files, maps_dir, npy)):
            row["map"] = str(written)
    try:
        save_csv(rows, csv_path)
    except FitmError as e:
        raise FitmError(f"--csv {e}") from None
    log.info("predict: %d images scored, written to %s", len(rows), csv_path)
    return rows, detector.threshold if threshold is None else threshold


def save_maps(maps: np.ndarray, files: list[Path], folder: Path, npy: bool) -> list[Path]:
    """<folder>/<name>.png per image: its map over the image at the file's own size, on one colour scale for all
    of them (the lowest to the highest value of these maps); with npy, <name>.npy the map at the run's size."""
    low, high = float(maps.min()), float(maps.max())
    names = []
    for path in files:
        name, n = path.stem, 1
        while name in names:  # two files of one name from different folders
            name, n = f"{path.stem}_{n}", n + 1
        names.append(name)
    for name in names:  # a run's own files are never written over, and nothing is written before that is known
        for suffix in (".png", ".npy") if npy else (".png",):
            refuse_artifact(folder / f"{name}{suffix}", "--maps")
    written = []
    for anomaly_map, path, name in zip(maps, files, names):
        image = read_image(path)
        resized = np.asarray(Image.fromarray(anomaly_map).resize((image.shape[1], image.shape[0]),
                                                                 Image.Resampling.BILINEAR))
        try:
            with atomic_path(folder / f"{name}.png") as tmp:
                Image.fromarray(report.overlay(image, resized, low, high)).save(tmp, format="png")
            if npy:
                save_npy(anomaly_map, folder / f"{name}.npy")
        except FitmError as e:
            raise FitmError(f"--maps {e}") from None
        written.append(folder / f"{name}.png")
    log.info("predict: %d heatmaps in %s (colours from %.4g to %.4g)", len(written), folder, low, high)
    return written


def redraw_report(run_dir: Path) -> Path:
    """Redraw a run's pictures; the test images come from its dataset when that can still be read."""
    run = Run(run_dir)
    run.load_metrics()
    config = run.load_config()
    try:
        split = load_split(config.data)
    except FitmError as e:
        log.warning("report: dataset not readable (%s); extremes.png and the map pictures left as they are", e)
        report.draw(run, None, config=config)
        return run.path("report.html")
    detector = Detector.load(run_dir, quiet=True)
    maps_of = None if detector._patches is None else lambda index: detector.anomaly_map(split.test_images[index])
    report.draw(run, split.test_images, maps_of=maps_of, masks=split.test_masks, config=config)
    return run.path("report.html")
