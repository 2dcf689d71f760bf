"""The `fitm` command's orchestration, shared with `fitm.Detector`: resolve and validate a config, check what
can be checked before any training, and run the stages for one class or all of them (on one process or as one
rank of a torchrun job)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from ml_collections import ConfigDict

from fitm.config import apply_overrides, load_config, set_key, validate_config
from fitm.errors import FitmError


def resolve_config(dataset: str | None, config_path: str | None, overrides=(), settings: dict | None = None
                   ) -> ConfigDict:
    """The config of a dataset or file, with `settings` ({'a.b': value}) and `key=value` overrides applied, then
    validated: a config that cannot run is refused here, before any work and before any file is written."""
    config = load_config(dataset, config_path)
    for key, value in (settings or {}).items():
        set_key(config, key, value)
    config = apply_overrides(config, overrides)
    return validate_config(config, "--config " + config_path if config_path else f"--dataset {config.data.name}")


def check_evaluation(config: ConfigDict, nnd: bool, fsde: str | None) -> None:
    """Refuse --nnd / --fsde where they do not apply, and an unreadable --fsde file, before anything trains."""
    from fitm.data import load_fakes, slice_class
    from fitm.stages import FIXED_CLASS_COUNTS, check_cifar10_evaluations

    check_cifar10_evaluations(config, nnd, fsde)
    if fsde:
        slice_class(load_fakes(fsde, what=f"--fsde {fsde}"), 0, FIXED_CLASS_COUNTS["cifar10"], f"--fsde {fsde}")


def run_classes(config: ConfigDict, normal_class: str | None, out: str | Path, quiet: bool, work: Callable,
                needs_generate: bool = True, needs_detector: bool = True) -> str | None:
    """`work(task)` for the normal class, or for every class with 'all' (then summary.csv is written and its
    table returned). Under torchrun the classes are shared out over the ranks when there are at least as many
    as ranks; otherwise every rank takes part in each class."""
    from fitm import stages
    from fitm.data import canonical_class, class_names
    from fitm.runtime import Runtime
    from fitm.sizing import refuse_gpu_sized_on_cpu

    everything = normal_class == "all"
    if everything:
        classes = class_names(config.data)
    else:
        config.data.normal_class = str(normal_class) if normal_class is not None else config.data.normal_class
        classes = [canonical_class(config.data)]
    runtime = Runtime.from_environment(config.device, quiet)
    share = runtime.distributed and len(classes) >= runtime.world_size
    mine = classes[runtime.rank::runtime.world_size] if share else classes
    local = runtime.alone() if share else runtime

    def before_work(task) -> None:
        """Once the first class's data is read: the checks that cost seconds, before hours of training."""
        refuse_gpu_sized_on_cpu(config, runtime.device, generate=needs_generate, detect=needs_detector)
        if needs_detector:
            check_backbone(config)

    results = {}
    for i, name in enumerate(mine):
        results[name] = _one_class(config, name, out, local, work, before_work if i == 0 else None)
    if share:
        results = {k: v for part in runtime.gather_objects(results) for k, v in part.items()}
    if not everything or not runtime.is_main or any(r is None for r in results.values()):
        return None
    return stages.write_summary(out, config.data.name, [results[name] for name in classes])


def _one_class(config: ConfigDict, name: str, out, runtime, work: Callable, before_work: Callable | None):
    from fitm import stages
    from fitm.data import canonical_class, load_split
    from fitm.run import Run
    from fitm.runtime import log

    config = copy.deepcopy(config)
    config.data.normal_class = str(name)
    canonical_class(config.data)
    run = Run.of(out, config, writer=runtime.is_main)
    split = load_split(config.data)
    check_split(config, split)
    task = stages.Task(run=run, config=config, split=split, runtime=runtime)
    if before_work is not None:
        before_work(task)
    with run, runtime.log_file(run.log_file):
        log.info("run %s: %d normal training images, %d test images, device %s, %d process(es)", run.dir,
                 len(split.normal_train), len(split.test_images), runtime.device, runtime.world_size)
        result = work(task)
        run.save_config(config)  # only once the stages succeeded: a refused or failed run leaves the old one
    return result


def check_split(config: ConfigDict, split) -> None:
    """The data-dependent limits of the config, checked before any training."""
    det = config.detector
    n_bank = len(split.normal_train) - int(round(det.holdout_fraction * len(split.normal_train)))
    if n_bank < 2:
        raise FitmError(f"detector.holdout_fraction={det.holdout_fraction}: leaves {n_bank} of "
                        f"{len(split.normal_train)} normal training images for the bank (expected at least 2)")
    limit = n_bank - 1 if det.holdout_fraction == 0 else n_bank
    if det.k > limit:
        raise FitmError(f"detector.k={det.k}: expected at most {limit} with {len(split.normal_train)} normal "
                        "training images (the kNN bank, less one for the leave-one-out threshold)")


def check_backbone(config: ConfigDict) -> None:
    """Build the detector once, weights included, so that a bad backbone or weights file fails now and not after
    hours of score-model training. Its warnings are left to the detect stage, which builds it again and logs them
    to the run's log too: said here as well, each was printed twice."""
    from fitm.detector.backbone import create_backbone
    from fitm.runtime import log

    was_disabled, log.disabled = log.disabled, True
    try:
        create_backbone(config.detector)
    finally:
        log.disabled = was_disabled
