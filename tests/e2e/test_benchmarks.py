"""The benchmark scripts that must not rot: the GPU check runs its own code on the CPU with --smoke; the quality
table's verdict."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_gpu_check_smoke_runs_on_cpu():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke"], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("train     fitm", "train     authors", "features  fitm", "training  fp32", "sampling  ddim",
                 "sampling  em", "generate stage", "end to end"):
        assert line in result.stdout, line


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
    assert "late_fakes" not in table.split("\n\n")[-1] and "blurred_normals" not in table.split("\n\n")[-1]


def test_quality_verdict_does_not_pit_fitm_against_its_own_fakes():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    row = {"fitm": 0.80, "pretrained_knn": 0.75, "late_fakes": 0.80, "noised_normals": 0.79, "blurred_normals": 0.7,
           "pixel_knn": 0.60, "degenerate": 0.0, "detector_balanced_accuracy": 0.6}
    verdict = quality.summary_table([{"class": "airplane", "seed": 0, **row}]).split("\n\n")[-1]
    assert "late_fakes are fitm's own fakes" in verdict and "beat late_fakes" not in verdict
    assert "fitm beats noised_normals" in verdict
