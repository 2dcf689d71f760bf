"""End to end through the `fitm` command on tiny configs: pipeline, detect, predict, report, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from fitm.cli import main


def _digits_train_index():
    """The digits adapter's fixed split: indices of its training half."""
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    return train_test_split(np.arange(len(labels)), test_size=0.5, stratify=labels, random_state=0)[0]

TINY = str(Path(__file__).parents[1] / "configs" / "tiny_digits.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One tiny digits pipeline shared by the tests that read a finished run."""
    out = tmp_path_factory.mktemp("runs")
    for command in ("generate", "pipeline"):  # the pipeline finds the fakes made by `fitm generate`
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--config", TINY, "--class", "3", "--out", str(out), "--quiet"])
        assert exit_info.value.code == 0
    return out / "digits" / "3"


def test_pipeline_writes_every_artifact(digits_run):
    assert not (digits_run / "sde/ckpt_20.pt").exists()  # fakes.checkpoint 10 of 20: training stopped there
    for name in ["config.json", "fitm.log", "fakes.npy", "fakes.json", "fakes.png", "sde/ckpt_10.pt",
                 "sde/samples_10.png", "detector/model.pt", "detector/bank.pt", "detector/train_log.csv", "scores.csv", "metrics.json", "roc.png",
                 "scores_hist.png", "extremes.png", "report.html"]:
        assert (digits_run / name).is_file(), name
    fakes = np.load(digits_run / "fakes.npy", allow_pickle=False)
    meta = json.loads((digits_run / "fakes.json").read_text())
    assert fakes.dtype == np.uint8 and fakes.shape[1:] == (8, 8, 3)
    assert meta["count"] == len(fakes) and meta["checkpoint"] == "sde/ckpt_10.pt"
    # digits are grey: a one-channel score model, and fakes (and its sample grids) with R = G = B
    assert meta["grayscale"] is True and (fakes == fakes[..., :1]).all() and fakes.std() > 0
    ckpt = torch.load(digits_run / "sde/ckpt_10.pt", map_location="cpu", weights_only=True)
    assert ckpt["ema"]["stem.weight"].shape[1] == 1
    samples = np.asarray(Image.open(digits_run / "sde/samples_10.png").convert("RGB"))
    assert (samples == samples[..., :1]).all()
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["class"] == "3"
    with open(digits_run / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == metrics["n_test"]
    # as many fakes as normal training images, and every normal training image is in the kNN bank
    assert len(fakes) == metrics["n_train"] == int((load_digits().target[_digits_train_index()] == 3).sum())
    assert metrics["threshold_from"] == "leave-one-out scores of the bank" and metrics["threshold"] > 0
    train_log = list(csv.DictReader(open(digits_run / "detector/train_log.csv")))
    assert metrics["detector"]["final_balanced_accuracy"] == pytest.approx(float(train_log[-1]["balanced_accuracy"]))
    log = (digits_run / "fitm.log").read_text()
    assert log.count("generate: wrote") == 1 and "fakes.npy is up to date, skipped" in log
    assert log.count("grayscale normal class") == 1 and "one-channel score model" in log


def test_a_backbone_warning_is_printed_once_and_logged(digits_run, cli, tmp_path):
    code, out, err = cli("detect", "--config", TINY, "--class", "3", "--out", str(tmp_path), "--quiet",
                         "--fakes", str(digits_run / "fakes.npy"), "--set", "detector.frozen_blocks=1")
    assert code == 0, err
    warning = "detector.frozen_blocks=1 keeps blocks at their random initial weights"
    assert (out + err).count(warning) == 1
    assert (tmp_path / "digits" / "3" / "fitm.log").read_text().count(warning) == 1


def test_report_redraws_pictures_and_html(digits_run, cli):
    for png in digits_run.glob("*.png"):
        png.unlink()
    (digits_run / "report.html").unlink()
    code, out, _ = cli("report", str(digits_run))
    assert code == 0 and "report.html" in out
    pictures = ["heatmaps.png", "roc.png", "scores_hist.png", "extremes.png", "sde/samples_10.png"]  # maps without
    # masks too: the digits' ViT has patch tokens
    page = (digits_run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for name in pictures:
        assert (digits_run / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f'src="{name}"' in page, name
    assert "image AUROC" in page and "pixel AUROC" not in page  # no masks, no pixel metrics


def test_report_puts_a_near_chance_detector_and_better_raw_pixels_first(digits_run, tmp_path):
    import shutil

    from fitm.report import write_html
    from fitm.run import Run

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["detector"]["final_balanced_accuracy"], metrics["auroc"], metrics["pixel_knn_auroc"] = 0.52, 0.7, 0.9
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = write_html(Run(run)).read_text()
    warnings = page[page.index("</h1>"):page.index("<h2>Metrics")]
    assert "0.520 of the time" in warnings and "near chance" in warnings
    assert "raw pixels scores higher" in warnings and "0.9000 against 0.7000" in warnings

    metrics["detector"]["final_balanced_accuracy"], metrics["auroc"], metrics["pixel_knn_auroc"] = 0.9, 0.9, 0.7
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = write_html(Run(run)).read_text()
    assert 'class="warn"' not in page[:page.index("<h2>Metrics")]


def test_predict_files_and_folder(digits_run, cli, tmp_path, write_image):
    from fitm.data import load_split
    from fitm.config import load_config

    config = load_config(path=str(digits_run / "config.json"))
    split = load_split(config.data)
    normal = split.test_images[split.test_labels == 0][:3]
    anomalous = split.test_images[split.test_labels == 1][:3]
    for i, image in enumerate(np.concatenate([normal, anomalous])):
        write_image(tmp_path / "imgs" / f"{i}.png", image)

    code, out, _ = cli("predict", "--run", str(digits_run), str(tmp_path / "imgs"))
    assert code == 0
    with open(digits_run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == [f"{i}.png" for i in range(6)]
    threshold = json.loads((digits_run / "metrics.json").read_text())["threshold"]
    for r in rows:
        assert r["verdict"] == ("anomalous" if float(r["score"]) > threshold else "normal")
        assert Path(r["path"]).name in out

    csv_path = tmp_path / "two.csv"
    code, out, _ = cli("predict", "--run", str(digits_run), "--threshold", "-1", "--csv", str(csv_path),
                       str(tmp_path / "imgs" / "0.png"), str(tmp_path / "imgs" / "4.png"))
    assert code == 0
    with open(csv_path) as f:
        rows2 = list(csv.DictReader(f))
    assert [r["verdict"] for r in rows2] == ["anomalous", "anomalous"]
    assert float(rows2[0]["score"]) == pytest.approx(float(rows[0]["score"]), rel=1e-3)  # batch-size rounding


def test_predict_refuses_other_sizes_unless_resized(digits_run, cli, tmp_path, write_image):
    write_image(tmp_path / "big.png", np.zeros((12, 12, 3), np.uint8))
    code, _, err = cli("predict", "--run", str(digits_run), str(tmp_path / "big.png"))
    assert code == 2 and "big.png" in err and "12x12" in err and err.count("\n") == 1
    code, _, _ = cli("predict", "--run", str(digits_run), "--resize", str(tmp_path / "big.png"))
    assert code == 0
    # a grey image of the run's size is converted (repeated to 3 channels), as the datasets' readers do
    write_image(tmp_path / "gray.png", np.full((8, 8), 90, np.uint8))
    write_image(tmp_path / "rgb.png", np.full((8, 8, 3), 90, np.uint8))
    code, out, _ = cli("predict", "--run", str(digits_run), str(tmp_path / "gray.png"),
                       str(tmp_path / "rgb.png"), "--csv", str(tmp_path / "p.csv"))
    with open(tmp_path / "p.csv") as f:
        scores = [float(r["score"]) for r in csv.DictReader(f)]
    # equal up to float rounding: a batch of two is reduced in a different order than one image
    assert code == 0 and scores[0] == pytest.approx(scores[1], rel=1e-5)


def test_predict_on_corrupt_image_and_untrained_run(digits_run, cli, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    code, _, err = cli("predict", "--run", str(digits_run), str(tmp_path / "bad.png"))
    assert code == 2 and "bad.png" in err and err.count("\n") == 1
    code, _, err = cli("predict", "--run", str(tmp_path), str(tmp_path / "bad.png"))
    assert code == 2 and "run" in err and err.count("\n") == 1


def test_pipeline_is_skipped_when_up_to_date(digits_run, cli):
    out = digits_run.parents[1]
    stamps = {p: p.stat().st_mtime_ns for p in [digits_run / "fakes.npy", digits_run / "detector/model.pt"]}
    code, stdout, _ = cli("pipeline", "--config", TINY, "--class", "3", "--out", str(out), "--quiet")
    assert code == 0 and "AUROC" in stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    log = (digits_run / "fitm.log").read_text()
    assert "generate: " in log and "is up to date, skipped" in log


def test_generate_with_auto_checkpoint_records_its_choice(cli, tmp_path):
    code, _, err = cli("generate", "--config", TINY, "--class", "4", "--out", str(tmp_path),
                       "--set", "fakes.checkpoint=auto", "--quiet")
    assert code == 0, err
    run = tmp_path / "digits" / "4"
    with open(run / "sde" / "auto_checkpoint.csv") as f:
        signal = list(csv.DictReader(f))
    assert [r["step"] for r in signal] == ["10", "20"]
    assert all(float(r["nearness"]) > 0 for r in signal)
    chosen = [r["step"] for r in signal if r["chosen"] == "True"]
    assert len(chosen) == 1
    assert json.loads((run / "fakes.json").read_text())["checkpoint"] == f"sde/ckpt_{chosen[0]}.pt"
    assert "fakes.checkpoint='auto' chose" in (run / "fitm.log").read_text()


def _synthetic_folder(root: Path, write_image, classes=("a",), n_train=40, n_test=20, seed=0):
    """Class a: horizontal ramps, class b: vertical ramps; with one class, vertical ramps are the anomalies.
    Returns noise images to serve as fakes."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 8)

    def ramps(n, vertical):
        base = np.broadcast_to(ramp[:, None] if vertical else ramp[None, :], (8, 8))
        images = base[None, :, :, None] * rng.uniform(0.6, 1.0, (n, 1, 1, 3)) + rng.normal(0, 4, (n, 8, 8, 3))
        return np.clip(images, 0, 255).astype(np.uint8)

    for c, name in enumerate(classes):
        for folder, images in ((f"train/{name}", ramps(n_train, c == 1)), (f"test/{name}", ramps(n_test, c == 1))):
            for i, image in enumerate(images):
                write_image(root / folder / f"{i:03d}.png", image)
    if len(classes) == 1:
        for i, image in enumerate(ramps(n_test, vertical=True)):
            write_image(root / "test/anomaly" / f"{i:03d}.png", image)
    return rng.integers(0, 256, (n_train, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("probe", [False, True])
def test_detect_separates_normals_from_anomalies(cli, tmp_path, write_image, probe):
    fakes = _synthetic_folder(tmp_path / "data", write_image)
    np.save(tmp_path / "fakes.npy", fakes)
    code, out, err = cli(
        "detect", "--config", TINY, "--set", "data.name=folder", "--class", "a",
        "--data-root", str(tmp_path / "data"), "--fakes", str(tmp_path / "fakes.npy"), "--out", str(tmp_path / "runs"),
        "--set", "detector.epochs=15", "--set", f"detector.linear_probe={probe}", "--quiet",
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "runs/folder/a/metrics.json").read_text())
    assert metrics["auroc"] > 0.9 and "AUROC" in out
    log = (tmp_path / "runs/folder/a/fitm.log").read_text()
    if probe:  # the head was fitted first: the probe already tells these noise fakes from the ramps
        assert metrics["detector"]["probe_balanced_accuracy"] > 0.9 and "linear probe" in log
    else:
        assert "probe_balanced_accuracy" not in metrics["detector"] and "linear probe" not in log


def test_pipeline_all_classes_writes_summary(cli, tmp_path, write_image):
    _synthetic_folder(tmp_path / "data", write_image, classes=("a", "b"), n_train=24, n_test=10)
    code, out, err = cli("pipeline", "--config", TINY, "--set", "data.name=folder", "--class", "all",
                         "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--quiet")
    assert code == 0, err
    with open(tmp_path / "runs/folder/summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["a", "b", "mean"]
    assert float(rows[2]["auroc"]) == pytest.approx((float(rows[0]["auroc"]) + float(rows[1]["auroc"])) / 2)
    assert "mean" in out and (tmp_path / "runs/folder/b/report.html").exists()


def test_killed_during_detect_resumes_without_redoing_generate(tmp_path):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "fitm", "pipeline", "--config", TINY, "--class", "5", "--out", str(out),
               "--quiet", "--set", "detector.epochs=400"]
    run = out / "digits" / "5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "detector" / "train_log.csv").exists():
            assert process.poll() is None and time.time() < deadline, "pipeline ended before detect"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    stamp = (run / "fakes.npy").stat().st_mtime_ns
    assert not (run / "detector" / "model.pt").exists() and not (run / "metrics.json").exists()

    finished = subprocess.run(command[:-2] + ["--set", "detector.epochs=2"], capture_output=True, text=True, env=env)
    assert finished.returncode == 0, finished.stderr
    assert (run / "fakes.npy").stat().st_mtime_ns == stamp
    assert json.loads((run / "metrics.json").read_text())["auroc"] >= 0


def test_detect_with_nnd_and_fsde_on_cifar10(cli, tmp_path, cifar10_root, cifar100_root):
    assert cifar10_root == cifar100_root
    rng = np.random.default_rng(0)
    np.save(tmp_path / "fakes.npy", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "fsde.npy", rng.integers(0, 256, (10 * 5, 32, 32, 3), dtype=np.uint8))
    code, out, err = cli(
        "detect", "--config", TINY, "--set", "data.name=cifar10", "--class", "airplane", "--data-root",
        str(cifar10_root), "--fakes", str(tmp_path / "fakes.npy"), "--nnd", "--fsde", str(tmp_path / "fsde.npy"),
        "--out", str(tmp_path / "runs"), "--quiet",
    )
    assert code == 0, err
    run = tmp_path / "runs/cifar10/airplane"
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "nnd.csv") as f:
        table = {r["cifar100_class"]: float(r["auroc"]) for r in csv.DictReader(f)}
    assert len(table) == 100 and metrics["nnd"]["min_auroc"] == min(table.values())
    assert table[metrics["nnd"]["min_class"]] == metrics["nnd"]["min_auroc"]
    assert 0 <= metrics["fsde_auroc"] <= 1
    assert "NND min AUROC" in out and "FSDE AUROC" in out


def test_fakes_file_is_sliced_or_refused_by_its_length(cli, tmp_path, cifar10_root):
    """10 normals per class in the fixture: 10 fakes are one class's, 100 all classes' in the authors' layout
    (class 2's slice is used); any other length is one clear line and exit 2, and nothing is trained."""
    rng = np.random.default_rng(0)
    args = ["detect", "--config", TINY, "--set", "data.name=cifar10", "--class", "bird", "--data-root",
            str(cifar10_root), "--out", str(tmp_path / "runs"), "--quiet"]
    np.save(tmp_path / "bad.npy", rng.integers(0, 256, (37, 32, 32, 3), dtype=np.uint8))
    code, _, err = cli(*args, "--fakes", str(tmp_path / "bad.npy"))
    assert code == 2 and err.count("\n") == 1 and "holds 37 images" in err and "(10:" in err and "(100)" in err
    assert not (tmp_path / "runs/cifar10/bird/detector").exists()

    all_classes = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "all.npy", all_classes)
    code, _, err = cli(*args, "--fakes", str(tmp_path / "all.npy"))
    assert code == 0, err
    run = tmp_path / "runs/cifar10/bird"
    assert json.loads((run / "metrics.json").read_text())["n_train"] == 10
    assert "holds all 10 classes in the authors' layout; using class 2" in (run / "fitm.log").read_text()


def test_fakes_that_are_not_uint8_nhwc_are_refused(cli, tmp_path):
    np.save(tmp_path / "floats.npy", np.zeros((4, 8, 8, 3), np.float32))
    np.save(tmp_path / "two_channels.npy", np.zeros((4, 8, 8, 2), np.uint8))
    for name in ("floats.npy", "two_channels.npy"):
        code, _, err = cli("detect", "--config", TINY, "--class", "1", "--fakes", str(tmp_path / name),
                           "--out", str(tmp_path / "runs"))
        assert code == 2 and name in err and "uint8 NHWC" in err and err.count("\n") == 1
        assert not (tmp_path / "runs/digits/1/detector").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["detect", "--dataset", "imagenet", "--class", "0"], "unknown dataset 'imagenet'"),
        (["pipeline", "--set", "detector.nope=1"], "unknown key 'detector.nope'"),
        (["pipeline", "--set", "detector.epochs=many"], "detector.epochs"),
        (["pipeline", "--set", "detector.epochs=1.5"], "expects a int"),
        (["pipeline", "--class", "12"], "12"),
        (["detect", "--dataset", "cifar10", "--class", "0", "--data-root", "/nonexistent/x"], "/nonexistent/x"),
        (["detect", "--dataset", "mvtec", "--class", "bottel"], "bottle"),
        (["generate", "--dataset", "digits", "--frobnicate"], "--frobnicate"),
        (["predict", "--run", "/nonexistent/run", "x.png"], "/nonexistent/run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, expected):
    code, _, err = cli(*args, *(["--out", str(tmp_path)] if args[0] != "predict" else []))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("Error: ") and expected in err
    assert not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob("*.pt"))


def test_extending_training_from_the_command_continues_from_the_newest_checkpoint(cli, tmp_path):
    args = ["generate", "--config", TINY, "--class", "5", "--out", str(tmp_path), "--quiet"]
    code, _, err = cli(*args)
    assert code == 0, err
    code, _, err = cli(*args, "--set", "training.n_iters=30", "--set", "training.snapshot_iters=(10, 20)",
                       "--set", "fakes.checkpoint=last")
    assert code == 0, err
    run = tmp_path / "digits" / "5"
    log = (run / "fitm.log").read_text()
    assert "resuming from" in log and "ckpt_10.pt" in log and "discarding" not in log
    assert sorted(p.name for p in (run / "sde").glob("ckpt_*.pt")) == ["ckpt_10.pt", "ckpt_20.pt", "ckpt_30.pt"]


def test_fakes_count_above_the_normal_count_makes_as_many_fakes_as_normals(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--config", TINY, "--class", "3", "--out", str(tmp_path), "--quiet",
              "--set", "fakes.count=5000"])
    assert exit_info.value.code == 0
    run = tmp_path / "digits" / "3"
    n_normal = int((load_digits().target[_digits_train_index()] == 3).sum())
    assert len(np.load(run / "fakes.npy")) == json.loads((run / "fakes.json").read_text())["count"] == n_normal
    assert "never more fakes than normal training images" in (run / "fitm.log").read_text()


def test_generate_trains_only_to_the_fakes_checkpoint_and_cheap_fakes_train_nothing(tmp_path, cli):
    code, _, err = cli("generate", "--config", TINY, "--class", "0", "--out", str(tmp_path / "sde"),
                       "--quiet")
    assert code == 0, err
    run = tmp_path / "sde" / "digits" / "0"
    assert sorted(p.name for p in (run / "sde").glob("ckpt_*.pt")) == ["ckpt_10.pt"]  # fakes.checkpoint 10 of 20
    meta = json.loads((run / "fakes.json").read_text())
    assert meta["source"] == "sde" and meta["trained_steps"] == 10 and meta["snapshots_not_trained"] == [20]

    code, _, err = cli("generate", "--config", TINY, "--class", "0", "--out", str(tmp_path / "noised"),
                       "--set", "fakes.source=noised", "--quiet")
    assert code == 0, err
    run = tmp_path / "noised" / "digits" / "0"
    meta = json.loads((run / "fakes.json").read_text())
    assert meta["source"] == "noised" and meta["noise_std"] == 25.5 and "checkpoint" not in meta
    assert not list(run.glob("sde/ckpt_*.pt")) and (run / "fakes.npy").is_file()
    fakes = np.load(run / "fakes.npy")
    assert meta["grayscale"] is True and (fakes == fakes[..., :1]).all()  # the same noise on every channel


def test_auto_records_the_snapshots_it_measured_and_those_never_trained(tmp_path, cli):
    code, _, err = cli("generate", "--config", TINY, "--class", "0", "--out", str(tmp_path),
                       "--set", "fakes.checkpoint=auto", "--set", "training.snapshot_iters=(5,10,15)",
                       "--set", "sampling.method=dpm_solver", "--quiet")
    assert code == 0, err
    run = tmp_path / "digits" / "0"
    with open(run / "sde" / "auto_checkpoint.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((run / "fakes.json").read_text())
    trained = [int(r["step"]) for r in rows if r["trained"] == "True"]
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20] and trained == [5, 10, 15, 20][: len(trained)]
    assert meta["trained_steps"] == trained[-1] and meta["sampler"] == "dpm_solver"
    assert sorted(int(p.stem.split("_")[1]) for p in (run / "sde").glob("ckpt_*.pt")) == trained
    assert meta["step"] == int(next(r["step"] for r in rows if r["chosen"] == "True"))
