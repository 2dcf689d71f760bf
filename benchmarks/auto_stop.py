"""Does 'auto' deciding while it trains choose what it chose after all the training? For each class run whose
score model was trained to its last snapshot (benchmarks/samplers.py and quality.py leave them under
<runs>/seed<N>/), 'auto' measures every snapshot, and the choice over all of them is set beside the choice at the
step where fakes.patience stops training: the steps trained each way, and whether the snapshot differs. The wall
time each way is the steps trained at the training rate measured here (the config's score model, same batch) plus
the probes of the snapshots measured, each timed here.

    OMP_NUM_THREADS=1 python benchmarks/auto_stop.py --runs runs/samplers-a --classes 0 1 2 --seeds 0 \\
        --set sampling.method=euler_maruyama --set sampling.steps=50      # probes drawn with another sampler
    python benchmarks/auto_stop.py --smoke        # a tiny run trained here: checks the script

Prints a row per class and writes <out>/auto_stop.csv.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_DATA, cifar_tree  # noqa: E402
from sde import train_rate  # noqa: E402

from fitm import stages  # noqa: E402
from fitm.config import apply_overrides, load_config  # noqa: E402
from fitm.data import load_split  # noqa: E402
from fitm.io import save_csv  # noqa: E402
from fitm.run import Run  # noqa: E402
from fitm.runtime import Runtime  # noqa: E402
from fitm.sde.early_stop import AutoChoice  # noqa: E402
from fitm.sde.early_stop import settled as early_stop_settled  # noqa: E402


def class_rows(run: Run, config, patiences: list[int], steps_per_s: float, runtime: Runtime) -> list[dict]:
    """Every snapshot measured once; for each patience, where training would have stopped, what it chose, and the
    wall time to get there."""
    split = load_split(config.data)
    steps = run.sde.steps()
    auto = AutoChoice(run.sde, split.normal_train, config, runtime)
    probe_s = []
    for step in steps:
        clock = time.perf_counter()
        auto.observe(step)
        probe_s.append(time.perf_counter() - clock)

    def wall_s(last: int) -> float:
        return steps[last] / steps_per_s + sum(probe_s[:last + 1])

    rows = []
    for patience in patiences:
        settled = next((i for i in range(len(steps)) if early_stop_settled(auto.choices[:i + 1], patience)),
                       len(steps) - 1)
        rows.append({"class": split.class_name, "seed": config.seed, "patience": patience,
                     "snapshots": " ".join(map(str, steps)),
                     "nearness": " ".join(f"{r['nearness']:.3f}" for r in auto.table), "choice_all": auto.step,
                     "trained_all": steps[-1], "choice_patience": auto.choices[settled],
                     "trained_patience": steps[settled], "same": auto.choices[settled] == auto.step,
                     "probe_s": " ".join(f"{s:.1f}" for s in probe_s), "wall_all_s": wall_s(len(steps) - 1),
                     "wall_patience_s": wall_s(settled)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "samplers", help="holds seed<N>/<dataset>/<class>")
    parser.add_argument("--config", default=str(REPO / "configs" / "cifar10_cpu.py"))
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="cifar10-jpeg.tar.gz or its unpacked tree")
    parser.add_argument("--classes", nargs="+", default=["0", "1", "2", "3", "4"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--patience", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "auto_stop")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. the sampler of the probes")
    parser.add_argument("--smoke", action="store_true", help="a tiny digits run trained here: checks the script")
    args = parser.parse_args()
    runtime = Runtime.local("cpu", quiet=True)
    base = apply_overrides(load_config(path=args.config), args.overrides)
    if args.smoke:
        scratch = Path(tempfile.mkdtemp(prefix="fitm-auto-stop-smoke-"))
        atexit.register(shutil.rmtree, scratch, True)
        base = apply_overrides(load_config(path=str(REPO / "tests" / "configs" / "tiny_digits.py")),
                               ["fakes.checkpoint=last", "training.snapshot_iters=(5,10,15)"])
        args.runs, args.out, args.classes, args.seeds = scratch, scratch, ["0"], [0]
    elif base.data.name == "cifar10":
        base.data.root = str(cifar_tree(args.data))
    steps_per_s, _ = train_rate(base, torch.device("cpu"), *((2, 1) if args.smoke else (30, 3)))
    print(f"score model training: {steps_per_s:.2f} steps/s (batch {base.training.batch_size})", flush=True)
    rows = []
    for name in args.classes:
        for seed in args.seeds:
            config = copy.deepcopy(base)
            config.data.normal_class, config.seed = name, seed
            run = Run.of(args.runs / f"seed{seed}", config)
            if args.smoke:
                run.open()
                stages.generate(stages.Task(run=run, config=config, split=load_split(config.data), runtime=runtime))
            for row in class_rows(run, config, args.patience, steps_per_s, runtime):
                rows.append(row)
                print(json.dumps(row), flush=True)
            save_csv(rows, args.out / "auto_stop.csv")
    for patience in args.patience:
        mine = [r for r in rows if r["patience"] == patience]
        print(f"patience {patience}: {sum(r['same'] for r in mine)} of {len(mine)} class runs choose the same "
              f"snapshot; steps trained {sum(r['trained_patience'] for r in mine)} instead of "
              f"{sum(r['trained_all'] for r in mine)}; wall {sum(r['wall_patience_s'] for r in mine):.1f} s instead "
              f"of {sum(r['wall_all_s'] for r in mine):.1f}")


if __name__ == "__main__":
    main()
