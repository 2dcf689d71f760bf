"""fitm from Python (the README's example on a tiny config), `fitm export` read back by onnxruntime, and the
guard that keeps a GPU-sized config from starting on a CPU."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import fitm
from fitm.cli import main

TINY = str(Path(__file__).parents[1] / "configs" / "tiny_digits.py")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    images = np.rint(d.images * 255 / 16).astype(np.uint8)[..., None].repeat(3, axis=3)
    return images[d.target == 0], images[d.target != 0]


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory):
    normal, _ = digits
    return fitm.Detector.from_config(TINY, quiet=True, workdir=tmp_path_factory.mktemp("work")).fit(normal[:80])


def test_fit_score_predict_save_load(fitted, digits, tmp_path):
    normal, others = digits
    held_out = fitted.score(normal[80:], resize=True)
    anomalies = fitted.score(others[:200], resize=True)
    assert held_out.dtype == np.float32 and held_out.shape == (len(normal) - 80,)
    assert np.median(anomalies) > np.median(held_out)  # other digits score higher than unseen zeros
    scores, anomalous = fitted.predict(others[:20], resize=True)
    assert np.array_equal(anomalous, scores > fitted.threshold) and fitted.threshold > 0
    same = fitm.Detector.load(fitted.save(tmp_path / "saved"), quiet=True)
    assert np.array_equal(same.score(others[:20], resize=True), scores)
    assert same.threshold == fitted.threshold
    maps = fitted.anomaly_map(others[:20], resize=True)
    assert maps.shape == (20, 8, 8) and maps.dtype == np.float32
    assert np.array_equal(same.anomaly_map(others[:20], resize=True), maps)
    # other digits' maps are higher than those of unseen zeros
    assert np.median(maps.mean((1, 2))) > np.median(fitted.anomaly_map(normal[80:], resize=True).mean((1, 2)))


def test_folders_and_files_score_as_arrays_do(fitted, digits, tmp_path):
    _, others = digits
    batch = fitted._images(others[:3], "x", resize=True)
    for i, image in enumerate(batch):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    from_folder = fitted.score(tmp_path)
    assert np.allclose(from_folder, fitted.score(batch), rtol=1e-5)
    assert np.allclose(fitted.score([tmp_path / "0.png"]), from_folder[:1], rtol=1e-5)


def test_bad_use_is_one_clear_fitm_error(fitted, digits):
    normal, _ = digits
    with pytest.raises(fitm.FitmError, match=r"unknown config key 'detector.nope' \(keyword detector__nope\)"):
        fitm.Detector.from_config(TINY, detector__nope=1)
    with pytest.raises(fitm.FitmError, match=r"detector.epochs=0"):
        fitm.Detector.from_config(TINY, detector__epochs=0)
    with pytest.raises(fitm.FitmError, match="not fitted"):
        fitm.Detector.from_config(TINY).score(normal)
    with pytest.raises(fitm.FitmError, match="images: 8x8, but this detector's images are 8x8|resize"):
        fitted.score(np.zeros((2, 5, 5, 3), np.uint8))
    with pytest.raises(fitm.FitmError, match="expected a uint8 NHWC array"):
        fitted.score(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(fitm.FitmError, match="at least 2"):
        fitm.Detector.from_config(TINY, quiet=True).fit(normal[:1])
    patches, fitted._patches = fitted._patches, None  # as a backbone without patch tokens leaves it
    try:
        with pytest.raises(fitm.FitmError, match=r"anomaly maps: .* has no patch bank \(detector/patches.pt\)"):
            fitted.anomaly_map(normal[:2], resize=True)
    finally:
        fitted._patches = patches


def test_exported_onnx_scores_as_predict_does(fitted, digits, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    _, others = digits
    run = fitted.save(tmp_path / "run")
    batch = fitted._images(others[:16], "x", resize=True)
    for i, image in enumerate(batch):
        Image.fromarray(image).save(tmp_path / f"img{i:02d}.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--run", str(run), *[str(p) for p in sorted(tmp_path.glob("img*.png"))], "--csv",
              str(tmp_path / "p.csv"), "--quiet"])
    assert exit_info.value.code == 0
    with open(tmp_path / "p.csv") as f:
        predicted = np.array([float(r["score"]) for r in csv.DictReader(f)])
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--run", str(run), "--out", str(tmp_path / "detector.onnx")])
    assert exit_info.value.code == 0 and "exported" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "detector.onnx"))
    assert [o.name for o in session.get_outputs()] == ["scores", "anomalous", "maps"]
    scores, anomalous, maps = session.run(None, {"images": batch})
    np.testing.assert_allclose(scores, predicted, rtol=1e-4)
    assert np.array_equal(anomalous, scores > fitted.threshold)
    expected = fitted.anomaly_map(batch)
    assert maps.shape == expected.shape == (16, 8, 8)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["fitm.threshold"]) == pytest.approx(fitted.threshold) and meta["fitm.k"] == "2"


def test_a_gpu_sized_config_is_not_started_on_a_cpu(capsys, mvtec_root):
    """The design card's own command: one line with the estimate and the CPU config to use, nothing started."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--dataset", "mvtec", "--class", "bottle", "--data-root", str(mvtec_root), "--out",
              str(mvtec_root / "runs")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "sized for" in err and "configs/mvtec_cpu.py" in err and "days" in err and "--set device=cpu" in err
    assert not (mvtec_root / "runs").exists()
