"""Where the anomaly is, end to end: a tiny pipeline on a synthetic MVTec AD category with ground-truth masks writes
pixel AUROC and AUPRO, per-defect AUROC and the map pictures; `fitm predict --maps` writes a heatmap per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fitm.cli import main

TINY = str(Path(__file__).parents[1] / "configs" / "tiny_digits.py")
# tiny_digits.py's models on 16 px images of an MVTec-layout category
MVTEC = ["--set", "data.name=mvtec", "--set", "data.normal_class=bottle", "--set", "data.image_size=16",
         "--set", "detector.img_size=16", "--set", "detector.resize=16"]
SIZE = 32  # of the files; the run stores them at 16 px, masks resized with them


def texture(rng) -> np.ndarray:
    xx = np.arange(SIZE)[None, :]
    pixels = 128 + 40 * np.sin(2 * np.pi * xx / 8 + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 6, (SIZE, SIZE))
    return np.clip(pixels, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def write_category(folder: Path, seed: int = 0) -> None:
    """Striped textures; test/square has a bright 10 px square, test/bar a bright bar, each with its mask."""
    rng = np.random.default_rng(seed)
    for name, count in (("train/good", 24), ("test/good", 6), ("test/square", 6), ("test/bar", 4)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = texture(rng), np.zeros((SIZE, SIZE), np.uint8)
            y, x = rng.integers(2, SIZE - 12, 2)
            if name == "test/square":
                mask[y:y + 10, x:x + 10] = 255
            elif name == "test/bar":
                mask[y:y + 4, 4:SIZE - 4] = 255
            image[mask > 0] = 250
            Image.fromarray(image).save(folder / name / f"{i:03d}.png")
            if mask.any():
                defect = name.split("/")[1]
                (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(folder / "ground_truth" / defect / f"{i:03d}_mask.png")


@pytest.fixture(scope="module")
def mvtec_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    write_category(root / "bottle")
    out = root / "runs"
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "--config", TINY, *MVTEC, "--class", "bottle", "--data-root", str(root), "--out",
              str(out), "--quiet"])
    assert exit_info.value.code == 0
    return root, out / "mvtec" / "bottle"


def test_pipeline_on_a_category_with_masks_writes_pixel_metrics(mvtec_run):
    _, run = mvtec_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pixel_auroc"] > 0.8 and 0.3 < metrics["aupro"] <= 1.0
    assert set(metrics["auroc_per_defect"]) == {"bar", "square"}
    counts = metrics["confusion"]
    assert counts["tp"] + counts["fn"] == 10 and counts["tn"] + counts["fp"] == 6
    for name in ("detector/patches.pt", "heatmaps.png", "durations.json"):
        assert (run / name).is_file(), name
    assert set(json.loads((run / "durations.json").read_text())) == {"generate", "detect", "evaluate"}


def test_report_reads_as_a_practitioner_needs(mvtec_run):
    _, run = mvtec_run
    page = (run / "report.html").read_text()
    for text in ("At the threshold", "called anomalous", "Image AUROC per defect type", "<td>square</td>",
                 "heatmaps.png", "Images wrongly called", "Stages", "the resolved config", '&quot;image_size&quot;: 16',
                 '<a href="scores.csv">', '<a href="metrics.json">', "pixel AUROC", "AUPRO", "fitm 0."):
        assert text in page, text


def test_report_redraws_the_map_pictures(mvtec_run, cli):
    _, run = mvtec_run
    (run / "heatmaps.png").unlink()
    code, out, err = cli("report", str(run))
    assert code == 0, err
    assert (run / "heatmaps.png").read_bytes().startswith(b"\x89PNG") and "report.html" in out


def test_predict_maps_writes_a_heatmap_and_raw_map_per_image(mvtec_run, cli, tmp_path):
    root, run = mvtec_run
    files = sorted((root / "bottle" / "test" / "square").glob("*.png"))
    code, out, err = cli("predict", "--run", str(run), *map(str, files), "--resize", "--maps",
                         str(tmp_path / "maps"), "--npy", "--quiet", "--csv", str(tmp_path / "p.csv"))
    assert code == 0, err
    for f in files:
        heatmap = Image.open(tmp_path / "maps" / f"{f.stem}.png")
        assert heatmap.size == (SIZE, SIZE) and heatmap.mode == "RGB"  # at the file's own size
        raw = np.load(tmp_path / "maps" / f"{f.stem}.npy")
        assert raw.shape == (16, 16) and raw.dtype == np.float32
        # the map is highest on the pasted square more often than not: its mean there beats the mean elsewhere
        mask = np.asarray(Image.open(root / "bottle" / "ground_truth" / "square" / f"{f.stem}_mask.png")
                          .resize((16, 16), Image.Resampling.NEAREST)) > 0
        assert raw[mask].mean() > raw[~mask].mean()
    assert "map" in (tmp_path / "p.csv").read_text().splitlines()[0] and "heatmaps:" in out


def test_predict_npy_without_maps_and_maps_onto_a_file_are_refused(mvtec_run, cli, tmp_path):
    root, run = mvtec_run
    image = str(next((root / "bottle" / "test" / "good").glob("*.png")))
    code, _, err = cli("predict", "--run", str(run), image, "--resize", "--npy")
    assert code == 2 and "--npy" in err and "--maps DIR" in err and err.count("\n") == 1
    (tmp_path / "file").write_text("")
    code, _, err = cli("predict", "--run", str(run), image, "--resize", "--maps", str(tmp_path / "file"))
    assert code == 2 and "is a file" in err


def test_a_missing_or_mis_sized_mask_is_one_clear_line(cli, tmp_path):
    write_category(tmp_path / "bottle")
    mask = tmp_path / "bottle" / "ground_truth" / "bar" / "001_mask.png"
    mask.unlink()
    args = ["detect", "--config", TINY, *MVTEC, "--class", "bottle", "--data-root", str(tmp_path), "--out",
            str(tmp_path / "runs"), "--quiet"]
    code, _, err = cli(*args)
    assert code == 2 and err.count("\n") == 1 and f"{mask}: no such mask" in err and "test/bar/001.png" in err
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)
    code, _, err = cli(*args)
    assert code == 2 and "the mask is 8x8, but its image" in err and "is 32x32" in err
    assert not (tmp_path / "runs").exists()
