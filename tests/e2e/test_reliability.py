"""Nothing a user types or breaks leaves a run damaged. Every refusal is one line on stderr with exit code 2 and no
traceback, comes before any work, and leaves a finished run exactly as it was (it still predicts the same
scores); damaged cached artifacts are made again; images of every mode PIL reads are scaled to 8-bit RGB."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fitm.cli import main

TINY = str(Path(__file__).parents[1] / "configs" / "tiny_digits.py")


def refused(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny digits run, the images it predicts on, and its scores and files as they were."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "--config", TINY, "--class", "3", "--out", str(out), "--quiet"])
    assert exit_info.value.code == 0
    run = out / "digits" / "3"
    images = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return {"out": out, "run": run, "images": images, "scores": predicted(run, images),
            "files": snapshot(run)}


def predicted(run: Path, images: Path) -> list[float]:
    csv_path = run.parent / "check.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--run", str(run), str(images), "--csv", str(csv_path), "--quiet"])
    assert exit_info.value.code == 0
    with open(csv_path) as f:
        return [float(r["score"]) for r in csv.DictReader(f)]


def snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != "fitm.log"}


def unchanged(finished) -> None:
    assert snapshot(finished["run"]) == finished["files"]
    assert predicted(finished["run"], finished["images"]) == finished["scores"]


@pytest.mark.parametrize("setting, words", [
    ("detector.k=0", ["detector.k=0", "positive integer"]),
    ("detector.k=100000", ["detector.k=100000", "at most"]),
    ("detector.normalize=foo", ["detector.normalize='foo'", "imagenet or inception"]),
    ("detector.backbone=resnet_nonexistent", ["detector.backbone='resnet_nonexistent'", "timm model"]),
    ("detector.feature_batch_size=0", ["detector.feature_batch_size=0"]),
    ("detector.threshold_quantile=2", ["detector.threshold_quantile=2.0", "(0, 1]"]),
    ("detector.batch_size=0", ["detector.batch_size=0"]),
    ("detector.epochs=0", ["detector.epochs=0", "positive integer"]),
    ("detector.holdout_fraction=1.5", ["detector.holdout_fraction=1.5"]),
    ("seed=-1", ["seed=-1", ">= 0"]),
    ("fakes.checkpoint=777", ["fakes.checkpoint='777'", "[10, 20]"]),
    ("training.snapshot_iters=(10, 99)", ["training.snapshot_iters=(10, 99)", "n_iters=20"]),
    ("sampling.method=heun", ["sampling.method='heun'"]),
    ("detector.pretrained=/nonexistent/w.pth", ["/nonexistent/w.pth", "does not exist"]),
    ("data.image_size=7", ["data.image_size=7", "multiple of"]),
])
def test_a_bad_setting_is_refused_before_any_work_and_the_run_is_kept(finished, cli, setting, words):
    code, _, err = cli("pipeline", "--config", TINY, "--class", "3", "--out", str(finished["out"]),
                       "--set", setting, "--quiet")
    refused(code, err, *words)
    unchanged(finished)


@pytest.mark.parametrize("flag, words", [
    (["--nnd"], ["--nnd", "cifar10 only"]),
    (["--fsde", "x.npy"], ["--fsde", "cifar10 only"]),
])
def test_an_evaluation_that_does_not_apply_is_refused_before_training(finished, cli, flag, words):
    code, _, err = cli("detect", "--config", TINY, "--class", "3", "--out", str(finished["out"]),
                       *flag)
    refused(code, err, *words)
    unchanged(finished)


@pytest.mark.parametrize("name, content, words", [
    ("none.py", "def get_config():\n    return None\n", ["get_config() returned NoneType"]),
    ("dict.py", "def get_config():\n    return {'seed': 0}\n", ["get_config() returned dict"]),
    ("broken.py", "def get_config(:\n", ["could not be loaded"]),
    ("list.json", "[1, 2]", ["holds list"]),
    ("empty.json", "{}", ["holds dict"]),
    ("binary.json", b"\x89PNG\r\n\x1a\n\x00\x00", ["not valid JSON"]),
    ("folder", None, ["is a folder"]),
    ("missing_key.json", "from-run", ["key detector.k is missing"]),
    ("extra_key.json", "extra", ["unknown key detector.nope"]),
])
def test_a_config_file_of_the_wrong_shape_is_refused(finished, cli, tmp_path, name, content, words):
    import json

    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif content in ("from-run", "extra"):
        config = json.loads((finished["run"] / "config.json").read_text())
        if content == "from-run":
            del config["detector"]["k"]
        else:
            config["detector"]["nope"] = 1
        path.write_text(json.dumps(config))
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = cli("pipeline", "--config", str(path), "--class", "3", "--out",
                       str(finished["out"]), "--quiet")
    refused(code, err, str(path), *words)
    unchanged(finished)


@pytest.fixture
def copy_of(finished, tmp_path):
    """A copy of the finished run's folder tree to damage."""
    out = tmp_path / "runs"
    shutil.copytree(finished["out"], out)
    return out, out / "digits" / "3"


def rerun(cli, out) -> tuple[int, str, str]:
    return cli("pipeline", "--config", TINY, "--class", "3", "--out", str(out), "--quiet")


@pytest.mark.parametrize("name, damage", [
    ("detector/model.pt", b""),
    ("detector/model.pt", "truncate"),
    ("fakes.npy", "truncate"),
    ("fakes.json", b"{not json"),
    ("sde/inputs.json", b"\x00\x01garbage"),
    ("sde/ckpt_10.pt", "truncate"),
])
def test_a_damaged_artifact_is_made_again_and_the_run_predicts_as_before(finished, copy_of, cli, name, damage):
    """The score model's files are read only when the fakes are made again, so for them fakes.npy goes too."""
    out, run = copy_of
    path = run / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3] if damage == "truncate" else damage)
    if name.startswith("sde/"):
        (run / "fakes.npy").unlink()
    code, _, err = rerun(cli, out)
    assert code == 0, err
    assert "Traceback" not in err
    log = (run / "fitm.log").read_text()
    assert "cannot be read" in log, log[-2000:]
    assert "discarding score-model checkpoints" not in log  # no training was thrown away
    assert predicted(run, finished["images"]) == pytest.approx(finished["scores"], rel=1e-5)


def test_leftovers_of_an_interrupted_write_are_removed(finished, copy_of, cli):
    out, run = copy_of
    leftovers = [run / "sde" / ".ckpt_10.pt.abc123.tmp.pt", run / ".fakes.npy.xyz.tmp.npy"]
    for path in leftovers:
        path.write_bytes(b"half")
    code, _, err = rerun(cli, out)
    assert code == 0, err
    assert not any(path.exists() for path in leftovers)


def test_a_damaged_bank_is_one_line_for_predict(finished, copy_of, cli):
    out, run = copy_of
    (run / "detector/bank.pt").write_bytes(b"\x00" * 10)
    code, _, err = cli("predict", "--run", str(run), str(finished["images"]))
    refused(code, err, "detector/bank.pt cannot be read", "fitm detect")


def test_a_truncated_scores_file_is_named_by_report(finished, copy_of, cli):
    out, run = copy_of
    lines = (run / "scores.csv").read_text().splitlines()
    (run / "scores.csv").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    code, _, err = cli("report", str(run))
    refused(code, err, "scores.csv holds", "damaged")


def test_file_system_trouble_is_one_line(finished, cli, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        code, _, err = cli("pipeline", "--config", TINY, "--class", "3", "--out", str(out), "--quiet")
        refused(code, err, "--out")
    code, _, err = cli("predict", "--run", str(finished["run"]), str(finished["images"]), "--csv",
                       str(tmp_path))
    refused(code, err, "--csv", "is a folder")
    (tmp_path / "weights.pth").write_text("hello, not weights")
    code, _, err = cli("detect", "--config", TINY, "--class", "3", "--out", str(tmp_path / "o"),
                       "--pretrained", str(tmp_path / "weights.pth"))
    refused(code, err, "weights.pth is not a readable weights file")
    unchanged(finished)


def test_a_run_that_fails_in_training_keeps_the_previous_detector(finished, copy_of, cli):
    """A learning rate that makes the loss non-finite stops with the key to change; the good detector, metrics
    and config stay."""
    out, run = copy_of
    before = snapshot(run)
    code, _, err = cli("pipeline", "--config", TINY, "--class", "3", "--out", str(out), "--quiet",
                       "--set", "detector.lr=1e9", "--set", "detector.momentum=0.9")
    refused(code, err, "detector.lr")
    after = snapshot(run)
    for name in ("detector/model.pt", "detector/bank.pt", "metrics.json", "scores.csv", "config.json", "report.html"):
        assert after[name] == before[name], name
    assert predicted(run, finished["images"]) == finished["scores"]


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P", "CMYK", "LA", "1", "L"])
def test_every_image_mode_is_read_as_8bit_rgb_by_scaling(tmp_path, mode):
    """A grey ramp written in each mode reads back as the same 8-bit ramp (16-bit scaled, not clipped)."""
    from fitm.data import read_images
    from fitm.data.images import read_image

    ramp = np.tile(np.linspace(0, 255, 16).round().astype(np.uint8), (16, 1))
    if mode == "I;16":
        image = Image.fromarray(ramp.astype(np.uint16) * 257)  # read back by PIL as mode I;16
    elif mode == "1":
        ramp = np.where(ramp > 127, 255, 0).astype(np.uint8)
        image = Image.fromarray(ramp).convert("1")
    elif mode in ("RGBA", "LA"):
        image = Image.fromarray(np.stack([ramp] * (3 if mode == "RGBA" else 1) + [np.full_like(ramp, 7)], -1), mode)
    else:
        image = Image.fromarray(ramp).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path, **({"quality": 100} if mode == "CMYK" else {}))
    for pixels in (read_image(path), read_images([path], 16)[0]):
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
        tolerance = 12 if mode in ("P", "CMYK") else 0  # palette and JPEG round a little
        assert np.abs(pixels.astype(int) - ramp[..., None]).max() <= tolerance, mode


@pytest.mark.parametrize("setting", ["detector.k=3", "detector.threshold_quantile=0.9",
                                     "detector.feature_batch_size=7", "training.log_every=10"])
def test_a_key_that_only_changes_scoring_does_not_retrain(finished, copy_of, cli, setting):
    out, run = copy_of
    before = snapshot(run)
    code, _, err = cli("pipeline", "--config", TINY, "--class", "3", "--out", str(out), "--quiet",
                       "--set", setting)
    assert code == 0, err
    after = snapshot(run)
    for name in ("fakes.npy", "detector/model.pt", "sde/ckpt_10.pt"):
        assert after[name] == before[name], name
    log = (run / "fitm.log").read_text()
    assert "fakes.npy is up to date, skipped" in log and "model.pt is up to date, skipped" in log
