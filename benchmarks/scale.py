"""How fitm scales over processes (torchrun): class-parallel classes/hour and data-parallel steps/s, for 1, 2, ...
processes, each with its scaling efficiency against one process, all measured in this run.

    OMP_NUM_THREADS=1 python benchmarks/scale.py                      # CPU: 1 and 2 processes (gloo)
    python benchmarks/scale.py --procs 1 2 4 8                        # GPUs: one per process (NCCL)
    OMP_NUM_THREADS=1 python benchmarks/scale.py --smoke              # a few steps of each: checks the script

Class-parallel: `torchrun --nproc_per_node N -m fitm pipeline --class all` on the digits (10 classes, a short
schedule), timed whole. Data-parallel: the score model's and the detector's training steps at the same global
batch on N ranks, timed inside the ranks (this script relaunched under torchrun as a worker).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE_OVERRIDES, synthetic_cifar_tree  # noqa: E402

DIGITS_SHORT = ["--set", "training.n_iters=100", "--set", "training.snapshot_iters=(50,)", "--set",
                "fakes.checkpoint=50", "--set", "detector.epochs=2", "--set", "detector.min_steps=0"]


def torchrun(procs: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]


def class_parallel(procs: int, out: Path, data: list[str], classes: int) -> float:
    """Classes per hour of the whole `--class all` command."""
    start = time.perf_counter()
    subprocess.run([*torchrun(procs), "-m", "fitm", "pipeline", "--dataset", "digits", "--class", "all", "--out",
                    str(out), "--quiet", *data], check=True, capture_output=True)
    return classes * 3600 / (time.perf_counter() - start)


def data_parallel(procs: int, steps: int) -> dict:
    """Steps/s of the score model and the detector on `procs` ranks (this script as the worker)."""
    result = subprocess.run([*torchrun(procs), __file__, "--worker", "--steps", str(steps)], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker(steps: int) -> None:
    import numpy as np

    from fitm.config import load_config
    from fitm.detector.backbone import create_backbone
    from fitm.detector.train import train_discriminator
    from fitm.runtime import Runtime
    from fitm.sde import ScoreTrainer

    config = load_config("digits")
    runtime = Runtime.from_environment(config.device, quiet=True)
    size = config.data.image_size
    images = np.random.default_rng(0).integers(0, 256, (512, size, size, 3), dtype=np.uint8)
    trainer = ScoreTrainer(images, config, runtime)
    trainer.step(1)
    runtime.barrier()
    start = time.perf_counter()
    for i in range(2, steps + 2):
        trainer.step(i)
    runtime.barrier()
    score_steps = steps / (time.perf_counter() - start)

    det = config.detector
    det.update(epochs=1, batch_size=64, min_steps=0)
    model = create_backbone(det)
    n = steps * det.batch_size // 2
    train_discriminator(model, images[:64], images[64:128], det, runtime, seed=0)  # warm-up
    runtime.barrier()
    start = time.perf_counter()
    train_discriminator(model, images[:n], images[:n][::-1].copy(), det, runtime, seed=0)
    runtime.barrier()
    detector_steps = (2 * n // det.batch_size) / (time.perf_counter() - start)
    if runtime.is_main:
        print(json.dumps({"score_model_steps_per_s": score_steps, "detector_steps_per_s": detector_steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=60, help="timed training steps of each data-parallel part")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="one process, a few steps of everything: checks "
                                                             "the script, not speed")
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps)
    data, classes = DIGITS_SHORT, 10
    if args.smoke:  # the digits config on a two-class synthetic image folder
        args.procs, args.steps, classes = [1], 2, 2
        data = [part for o in SMOKE_OVERRIDES + ["data.name=folder"] for part in ("--set", o)]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            data += ["--data-root", str(synthetic_cifar_tree(Path(tmp) / "data", classes=classes))]
        for procs in args.procs:
            rows.append({"procs": procs, "classes_per_hour": class_parallel(procs, Path(tmp) / f"p{procs}", data,
                                                                            classes),
                         **data_parallel(procs, args.steps)})
            print(f"{procs} process(es) done", file=sys.stderr, flush=True)
    base = rows[0]
    print(f"{'processes':>9} {'classes/h':>10} {'eff.':>6} {'score steps/s':>14} {'eff.':>6} "
          f"{'detector steps/s':>17} {'eff.':>6}")
    for r in rows:
        scale = r["procs"] / base["procs"]
        eff = lambda key: r[key] / (base[key] * scale)
        print(f"{r['procs']:>9} {r['classes_per_hour']:>10.1f} {eff('classes_per_hour'):>6.2f} "
              f"{r['score_model_steps_per_s']:>14.2f} {eff('score_model_steps_per_s'):>6.2f} "
              f"{r['detector_steps_per_s']:>17.2f} {eff('detector_steps_per_s'):>6.2f}")
    print(f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; efficiency = rate / (one process's "
          "rate x processes); data-parallel keeps the global batch, so its ideal is the same steps/s x processes)")


if __name__ == "__main__":
    main()
