"""Using a finished run: score new images with its detector, and redraw its report."""

from __future__ import annotations

from pathlib import Path

from fitm import report
from fitm.api import Detector
from fitm.config import finite_number
from fitm.data import list_images, load_split
from fitm.errors import FitmError
from fitm.io import save_csv
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
            quiet: bool = False):
    """One row per image: path, score, verdict (anomalous when score > threshold), also written to csv_path."""
    if threshold is not None:
        threshold = finite_number(threshold, "--threshold")
    if csv_path.is_dir():
        raise FitmError(f"--csv {csv_path}: is a folder (expected the path of the CSV file to write)")
    refuse_artifact(csv_path, "--csv", own=("predictions.csv",))
    detector = Detector.load(run_dir, quiet=quiet)
    files = _image_paths(paths)
    scores, anomalous = detector.predict(files, threshold, resize)
    rows = [{"path": str(p), "score": float(s), "verdict": "anomalous" if a else "normal"}
            for p, s, a in zip(files, scores, anomalous)]
    try:
        save_csv(rows, csv_path)
    except FitmError as e:
        raise FitmError(f"--csv {e}") from None
    log.info("predict: %d images scored, written to %s", len(rows), csv_path)
    return rows, detector.threshold if threshold is None else threshold


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
