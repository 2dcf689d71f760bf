"""The benchmark scripts that must not rot: each runs its own code on tiny data with --smoke and prints its table;
the quality table's verdict."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).parents[2]


def smoke(script: str) -> str:
    """The script's --smoke output; it must exit 0."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke"], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_gpu_check_smoke_runs_on_cpu():
    out = smoke("gpu.py")
    rates, rest = out.split("\nclass step: ")
    one_class, quality = rest.split("\nquality step: ")
    for line in ("train     fitm", "train     authors", "features  fitm", "training  fp32", "sampling  ddim",
                 "sampling  em", "generate stage", "end to end"):
        assert line in rates, line

    # class: fitm's stages on a tiny synthetic airplane, each stage's seconds, and the class projected from them
    assert one_class.startswith("airplane of a tiny synthetic tree (--smoke): 24 normal training images, 80 test")
    seconds = {stage: float(re.search(rf"^  {stage} +(\d+\.\d) s", one_class, re.M).group(1))
               for stage in ("generate", "detect", "evaluate", "stages")}
    assert abs(seconds["stages"] - sum(seconds[s] for s in ("generate", "detect", "evaluate"))) <= 0.15
    rate = float(re.search(r"score model (\d+\.\d\d) steps/s from step 3 to 5\)$", one_class, re.M).group(1))
    epoch_rate = float(re.search(r"\(1 epochs of 48 images, (\d+\.\d) images/s in the last\)$", one_class,
                                 re.M).group(1))
    assert "training up to step 20000 and 30 detector epochs" in one_class  # cifar10.py: 'auto' up to 20,000 steps
    projected = re.search(r"^    generate (\d+\.\d) min, detect (\d+\.\d) min, evaluate (\d+\.\d) min; one class "
                          r"(\d+\.\d) min$", one_class, re.M)
    generate, detect, evaluate, total = (60 * float(v) for v in projected.groups())
    assert abs(generate - (seconds["generate"] + (20000 - 6) / rate)) < 0.01 * generate + 3  # 6 steps run
    assert abs(detect - (seconds["detect"] + 29 * 48 / epoch_rate)) <= 3.2  # 1 epoch run of 30
    assert abs(total - (generate + detect + evaluate)) <= 12

    # quality: the stand-in's kNN, the detector on SDE fakes and on noised normals, and their difference
    assert quality.startswith("airplane at 16 px of a tiny synthetic tree (--smoke); anomalies: the test images of "
                              "automobile, bird, cat, deer")
    assert "1 epochs on 120 images of classes 5-9" in quality and "epoch 1/1: loss" in quality
    auroc = {name: float(re.search(rf"^  {name} AUROC +(\d+\.\d\d)", quality, re.M).group(1))
             for name in ("stand-in kNN", "SDE fakes", "noised normals")}
    difference = float(re.search(r"^  SDE minus noised +([+-]\d+\.\d\d) points$", quality, re.M).group(1))
    assert abs(difference - (auroc["SDE fakes"] - auroc["noised normals"])) <= 0.011
    parts = r"stand-in \d+\.\d, data \d+\.\d, stand-in kNN \d+\.\d, score model and fakes \d+\.\d, SDE-fakes detector "
    assert re.search(rf"^  seconds: {parts}\d+\.\d, noised detector \d+\.\d; total \d+\.\d$", quality, re.M), quality


def test_gpu_check_runs_the_steps_asked_and_skips_quality_without_the_data(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import logging

    import gpu

    absent = tmp_path / "absent.tar.gz"
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--steps", "quality", "--data", str(absent)])
    logger = logging.getLogger("fitm")
    level = logger.level
    try:
        gpu.main()
    finally:
        logger.setLevel(level)  # main() quiets fitm's log for its random weights
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("device ") and lines[1] == "", lines  # no rates step
    assert lines[2] == f"quality step: skipped: it needs the real CIFAR-10 data, and {absent} is absent (--data PATH)"


def test_gpu_check_times_the_score_model_between_logged_steps():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu
    import torch

    clock = gpu.StepClock(device=torch.device("cpu"))
    clock.began.update({1: 0.0, **{step: 3.0 + step for step in range(2, 11)}})  # step 1 (the warm-up) takes 5 s
    assert clock.steps_per_s(log_every=2) == (1.0, 3, 9)  # from after step 2 to after step 8
    assert clock.steps_per_s(log_every=100) == (9 / 13, 1, 10)  # nothing logged twice: the whole run
    assert gpu.sampler("dpm_solver:10") == ("dpm_solver", 10)
    for bad in ("dpm_solver", "heun:10", "ddim:0"):
        try:
            gpu.sampler(bad)
        except gpu.argparse.ArgumentTypeError as e:
            assert "expected METHOD:STEPS" in str(e)
        else:
            raise AssertionError(bad)


def test_gpu_check_projects_to_the_step_the_config_trains_to():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu
    from fitm.config import load_config

    assert gpu.trained_to(load_config(path=str(REPO / "configs" / "cifar10.py"))) == 20000  # 'auto': at most
    assert gpu.trained_to(load_config(path=str(REPO / "configs" / "default.py"))) == 5000  # a fixed checkpoint
    short = gpu.shorten(load_config(path=str(REPO / "configs" / "cifar10.py")), 1000, ("dpm_solver", 10), True, False)
    assert (short.training.n_iters, tuple(short.training.snapshot_iters), short.fakes.checkpoint) == (1000, (), "1000")
    assert short.training.compile and (short.sampling.method, short.sampling.steps) == ("dpm_solver", 10)
    assert short.training.warmup == 5000 and short.training.batch_size == 128  # the other keys as shipped
    assert gpu.trained_to(short) == 1000


def test_detector_smoke():
    out = smoke("detector.py")
    assert re.search(r"^train    ratio +\d+\.\d\dx$", out, re.M), out
    assert re.search(r"^features ratio +\d+\.\d\dx$", out, re.M), out
    assert "queries/s  (64 queries x 256 bank, D=64, k=2)" in out


def test_sde_smoke():
    out = smoke("sde.py")
    assert re.search(r"^  ddim / em +\d+\.\dx images/s  \(network evaluations: 1\.2x\)$", out, re.M), out
    assert "euler_maruyama 4 steps: skipped on CPU for cifar10" in out
    assert out.count("training ") == 2


def test_fakes_smoke():
    out = smoke("fakes.py")
    assert "| airplane |  | normal images |" in out
    for step in (3, 6):
        assert f"| airplane | {step} | em50 | 51 |" in out and f"| airplane | {step} | em50+clip | 51 |" in out


def test_pretrain_smoke():
    out = smoke("pretrain.py")
    assert "on 120 images of dog, frog, horse, ship, truck" in out and "epoch 1/1: loss" in out
    assert re.search(r"\(weights sha256 [0-9a-f]{16}\) after \d+\.\d minutes of training on 1 thread\(s\), CPU "
                     r"capability \w+$", out, re.M), out
    assert re.search(r"classes 0-4 vs the rest of 0-4: (\d+\.\d / ){4}\d+\.\d, mean \d+\.\d$", out, re.M), out


def test_the_stand_in_is_the_same_weights_for_the_same_seed(tmp_path):
    """Every stand-in figure compares rows made on one weights file: remaking it must give the same file."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import pretrain
    import torch

    from fitm.config import load_config

    config = load_config(path=str(REPO / "configs" / "cifar10_cpu.py"))
    root = pretrain.cifar_tree(pretrain.synthetic_cifar_tree(tmp_path / "data", train=8, test=1))
    images, labels = pretrain.read_classes(root, "train", pretrain.PRETRAIN_CLASSES, config.data.image_size)

    def weights(seed):
        model = pretrain.stand_in(config.detector, images, labels, epochs=1, batch=8, seed=seed)
        return {k: v.clone() for k, v in model.state_dict().items()}

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # the printed digest names the weights: equal for equal weights, another for one changed number
    assert pretrain.weights_digest(first) == pretrain.weights_digest(again) != pretrain.weights_digest(other)
    nudged = {**first, "head.bias": first["head.bias"] + 1e-6}
    assert pretrain.weights_digest(nudged) != pretrain.weights_digest(first)

def test_quality_smoke():
    out = smoke("quality.py")
    assert re.search(r"^\| airplane \| \d+\.\d\d \| \d+\.\d\d \| .* \| \d\.\d{3} \| \d+\.\d \|$", out, re.M), out
    # one seed: no spread; the last columns the detector's balanced accuracy and the generate stage's minutes
    assert "fitm's mean AUROC" in out and "late_fakes are fitm's own fakes" in out
    assert re.search(r"^\| airplane \| 0 \| 6 \| \d+\.\d\d \| yes \|$", out, re.M), out  # the study
    assert out.count("Mean ± half-range over seeds 0") == 2  # the run's table, then --merge of its CSV


def test_quality_with_a_cheap_fakes_source_has_no_score_model_columns():
    """fakes.source=cutpaste: the fitm column is the CutPaste detector, a reference needing no score model."""
    script = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--smoke", "--set", "fakes.source=cutpaste"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run(script, capture_output=True, text=True, timeout=600, env=env)
    assert refused.returncode == 1 and "late_fakes variant need one" in refused.stderr, refused.stderr[-2000:]
    result = subprocess.run(script + ["--variants", "noised_normals"], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    number = r"\d+\.\d\d"
    assert re.search(rf"^\| airplane \| {number} \| {number} \| not run \| {number} \| not run \|", result.stdout,
                     re.M), result.stdout
    assert "snapshot step" not in result.stdout  # no study


def test_mvtec_cpu_smoke():
    out = smoke("mvtec_cpu.py")
    assert "8 normal training images, 83 test images, 64 px" in out
    assert re.search(r"whole `fitm pipeline`: \d+\.\d min \(generate \d+\.\d, detect \d+\.\d, evaluate and "
                     r"report \d+\.\d\)", out), out


def test_predict_smoke():
    out = smoke("predict.py")
    for line in ("fitm predict, files", "PyTorch, images in memory", "onnxruntime, images in memory",
                 "onnxruntime, files"):
        assert re.search(rf"^{line}.* \d+\.\d images/s", out, re.M), line
    score_gap = float(re.search(r"ONNX vs PyTorch (\S+)$", out, re.M).group(1))
    assert score_gap < 1e-3  # the exported file scores as PyTorch does


def test_samplers_smoke():
    out = smoke("samplers.py")
    assert re.search(r"^\| dpm_solver:3 \(config\) \| 4 \| ", out, re.M), out
    assert re.search(r"^\| euler_maruyama:4 \| 5 \| \d+\.\d \| .* \| [+-]\d+\.\d\d ± \d+\.\d\d \| [01] of 1 \|$", out, re.M), out
    assert re.search(r"^\| ddim:4 \| 5 \| .* \| not run \|  \|  \|$", out, re.M), out  # probes only


def test_samplers_merge_pairs_runs_of_different_config_samplers_through_the_reference():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import samplers

    def row(seed, sampler, auroc, speed="nan"):
        return {"class": "airplane", "seed": seed, "sampler": sampler, "nfe": 11, "images_per_s": speed,
                "nearness": 1.2, "degenerate": 0.0, "auroc": auroc}

    rows = [row("0", "euler_maruyama:50 (config)", 0.80), row("0", "dpm_solver:10", 0.79, "90"),
            row("1", "dpm_solver:10 (config)", 0.83), row("1", "euler_maruyama:50", 0.80, "20")]
    table = samplers.summary_table(rows, "euler_maruyama:50")
    assert re.search(r"^\| dpm_solver:10 \| 11 \| 90\.0 \| .* \| 81\.00 \| \+1\.00 ± 2\.00 \| 1 of 2 \|$", table, re.M), table
    assert re.search(r"^\| euler_maruyama:50 \| 11 \| 20\.0 \| .* \| 80\.00 \|  \|  \|$", table, re.M), table
    assert "(config)" not in table
    assert "dpm_solver:10 (config)" in samplers.summary_table(rows)  # without a reference, each run's own

    # a later run on the same models repeats the config row and trains what the first only probed: one row each
    probed = [row("0", "euler_maruyama:50 (config)", 0.80), row("0", "ddim:100", "nan", "11")]
    trained = [row("0", "euler_maruyama:50 (config)", 0.80), row("0", "ddim:100", 0.78, "12")]
    merged = samplers.merge_rows([probed, trained])
    assert [(r["sampler"], r["auroc"]) for r in merged] == [("euler_maruyama:50 (config)", 0.80), ("ddim:100", 0.78)]
    assert re.search(r"^\| ddim:100 \| 11 \| 12\.0 \| .* \| 78\.00 \| -2\.00 ± 0\.00 \| 0 of 1 \|$",
                     samplers.summary_table(merged), re.M)


def test_auto_stop_smoke():
    out = smoke("auto_stop.py")
    assert re.search(r"^score model training: \d+\.\d\d steps/s \(batch \d+\)$", out, re.M), out
    summary = re.search(r"^patience 1: [01] of 1 class runs choose the same snapshot; steps trained (\d+) instead of "
                        r"20; wall (\d+\.\d) s instead of (\d+\.\d)$", out, re.M)
    assert summary, out
    trained, wall_patience, wall_all = int(summary[1]), float(summary[2]), float(summary[3])
    assert trained < 20 and wall_patience < wall_all  # stopping early trains less and takes less time


def test_scale_smoke():
    out = smoke("scale.py")
    assert re.search(r"^ +1 +\d+\.\d +1\.00 +\d+\.\d\d +1\.00 +\d+\.\d\d +1\.00$", out, re.M), out


def test_quality_verdict_leaves_out_variants_not_run():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    nan = float("nan")
    row = {"fitm": 0.80, "pretrained_knn": 0.75, "late_fakes": nan, "noised_normals": 0.81, "blurred_normals": nan,
           "pixel_knn": 0.60, "degenerate": 0.0, "detector_balanced_accuracy": 0.6}
    rows = [{"class": "airplane", "seed": seed, **row} for seed in (0, 1)]
    table = quality.summary_table(rows)
    assert "| airplane | 80.00 ± 0.00 | 75.00 ± 0.00 | not run | 81.00 ± 0.00 | not run |" in table
    assert "+5.00 points; fitm wins on 1 of 1 classes" in table
    assert "does NOT beat noised_normals" in table and "beats pixel_knn" in table
    assert "late_fakes" not in table.split("\n\n")[-2] and "blurred_normals" not in table.split("\n\n")[-2]


def test_quality_verdict_does_not_pit_fitm_against_its_own_fakes():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    row = {"fitm": 0.80, "pretrained_knn": 0.75, "late_fakes": 0.80, "noised_normals": 0.79, "blurred_normals": 0.7,
           "pixel_knn": 0.60, "degenerate": 0.0, "detector_balanced_accuracy": 0.6}
    verdict = quality.summary_table([{"class": "airplane", "seed": 0, **row}]).split("\n\n")[-2]
    assert "late_fakes are fitm's own fakes" in verdict and "beat late_fakes" not in verdict
    assert "fitm beats noised_normals" in verdict


def test_quality_margins_pair_fitm_with_each_baseline_by_class_and_seed():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    nan = float("nan")
    base = {"late_fakes": nan, "blurred_normals": nan, "pixel_knn": 0.6, "degenerate": 0.0,
            "detector_balanced_accuracy": 0.6}
    rows = [{"class": "airplane", "seed": 0, "fitm": 0.80, "noised_normals": 0.78, "cutpaste_normals": 0.81,
             "pretrained_knn": 0.75, **base},
            {"class": "cat", "seed": 0, "fitm": 0.70, "noised_normals": 0.70, "cutpaste_normals": 0.69,
             "pretrained_knn": 0.66, **base},
            {"class": "airplane", "seed": 1, "fitm": 0.82, "noised_normals": 0.76, "pretrained_knn": 0.75, **base},
            {"class": "cat", "seed": 1, "fitm": 0.69, "noised_normals": 0.71, "pretrained_knn": 0.66, **base}]
    margins = quality.margins(rows)
    # noised: seed 0 (+2, 0) -> +1.00, seed 1 (+6, -2) -> +2.00: +1.50 +- 0.50, higher on 2 of 4 (a tie is not higher)
    assert "| noised_normals | +1.50 ± 0.50 | 2 of 4 class-seeds |" in margins
    assert "| cutpaste_normals | +0.00 | 1 of 2 class-seeds |" in margins  # seed 1 has no cutpaste row
    assert "| pretrained_knn | +4.75 ± 0.25 | 4 of 4 class-seeds |" in margins
    assert "blurred_normals" not in margins
    # the better cheap fake of each class-seed with two: airplane 0.81 (-1), cat 0.70 (0); seed 1 has one
    assert "| best cheap fake | -0.50 | 0 of 2 class-seeds |" in margins


def test_quality_merge_keeps_the_seeds_asked_for(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    rows = [{"class": "airplane", "seed": seed, "fitm": 0.8, "pretrained_knn": 0.75, "noised_normals": 0.79,
             "pixel_knn": 0.6, "degenerate": 0.0, "detector_balanced_accuracy": 0.6} for seed in (0, 1, 2)]
    quality.save_csv(rows, tmp_path / "in.csv")
    for seeds, header in ((None, "seeds 0, 1, 2"), ([0, 2], "seeds 0, 2")):
        quality.measure(SimpleNamespace(merge=[tmp_path / "in.csv"], seeds=seeds, reference=[],
                                        out=tmp_path / "out"))
        assert f"Mean ± half-range over {header} (AUROC %)" in (tmp_path / "out/quality.md").read_text()


def test_quality_merge_fills_a_cheap_column_from_a_reference_run_on_the_same_backbone(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    from fitm.errors import FitmError

    common = {"pixel_knn": 0.6, "degenerate": 0.0, "detector_balanced_accuracy": 0.6}
    sde = [{"class": name, "seed": 0, "fitm": fitm, "pretrained_knn": knn, "noised_normals": 0.75, **common}
           for name, fitm, knn in (("airplane", 0.80, 0.70), ("cat", 0.72, 0.66))]
    cutpaste = [{"class": name, "seed": 0, "fitm": fitm, "pretrained_knn": knn, **common}
                for name, fitm, knn in (("airplane", 0.82, 0.70), ("cat", 0.70, 0.66))]
    quality.save_csv(sde, tmp_path / "sde.csv")
    quality.save_csv(cutpaste, tmp_path / "cutpaste.csv")
    args = SimpleNamespace(merge=[tmp_path / "sde.csv"], seeds=None, out=tmp_path / "out",
                           reference=[f"cutpaste_normals={tmp_path / 'cutpaste.csv'}"])
    quality.measure(args)
    table = (tmp_path / "out/quality.md").read_text()
    assert "| cutpaste_normals | +0.00 | 1 of 2 class-seeds |" in table  # -2 and +2
    assert "| best cheap fake | -2.50 | 0 of 2 class-seeds |" in table  # airplane -2, cat -3 (noised 0.75)

    cutpaste[1]["pretrained_knn"] = 0.67  # made on another stand-in
    quality.save_csv(cutpaste, tmp_path / "cutpaste.csv")
    with pytest.raises(FitmError, match="cat seed 0 has the backbone's kNN 67.00 against 66.00"):
        quality.measure(args)
    args.reference = ["noised=x.csv"]
    with pytest.raises(FitmError, match="expected COLUMN=CSV with COLUMN one of noised_normals"):
        quality.measure(args)
    args.reference = [f"cutpaste_normals={tmp_path / 'missing.csv'}"]
    with pytest.raises(FitmError, match="missing.csv: no such file"):
        quality.measure(args)


def test_quality_merge_fills_a_variant_column_from_another_score_models_run(tmp_path):
    """The noised normals one run measured pair with another run's rows; a score model's run that did not measure
    the column is refused rather than lending its own fitm."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    from fitm.errors import FitmError

    common = {"class": "airplane", "seed": 0, "pretrained_knn": 0.70, "pixel_knn": 0.6, "degenerate": 0.0,
              "detector_balanced_accuracy": 0.6, "fakes_step": 12000.0}
    quality.save_csv([{**common, "fitm": 0.80, "noised_normals": float("nan")}], tmp_path / "long.csv")
    quality.save_csv([{**common, "fitm": 0.78, "noised_normals": 0.76}], tmp_path / "short.csv")
    args = SimpleNamespace(merge=[tmp_path / "long.csv"], seeds=None, out=tmp_path / "out",
                           reference=[f"noised_normals={tmp_path / 'short.csv'}"])
    quality.measure(args)
    assert "| noised_normals | +4.00 | 1 of 1 class-seeds |" in (tmp_path / "out/quality.md").read_text()

    args.reference = [f"cutpaste_normals={tmp_path / 'short.csv'}"]
    with pytest.raises(FitmError, match="airplane seed 0 is a score model's run without cutpaste_normals"):
        quality.measure(args)


def test_quality_refuses_a_reference_without_merge(monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    monkeypatch.setattr(sys, "argv", ["quality.py", "--reference", "cutpaste_normals=x.csv"])
    with pytest.raises(SystemExit) as exit_:
        quality.main()
    assert exit_.value.code == 2
    assert "--reference joins rows of earlier runs: it needs --merge" in capsys.readouterr().err
