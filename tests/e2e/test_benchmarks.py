"""The benchmark scripts that must not rot: the GPU check runs its own code on the CPU with --smoke."""

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
