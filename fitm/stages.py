"""The stages as functions: generate -> detect -> evaluate, for one `Task` (a dataset's normal class, its run
folder, config, data and runtime). Each stage asks the Run whether its outputs exist and were made from the same
inputs (the Run's cache keys); then it is skipped, and `force` redoes it. Under torchrun every rank runs the
same stage calls on its share of the work; only the main rank writes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from ml_collections import ConfigDict

from fitm import report
from fitm.config import fakes_count
from fitm.data import Split, class_names, cifar100_fine_test, is_grayscale, load_fakes, slice_class
from fitm.data.cheap_fakes import cheap_fakes
from fitm.detector.backbone import create_architecture, create_backbone, freeze
from fitm.detector.evaluate import auroc_per_group, confusion
from fitm.detector.evaluate import metrics as compute_metrics
from fitm.detector.maps import NoPatchTokens, anomaly_maps, patch_bank
from fitm.detector.pixel_metrics import aupro, pixel_auroc
from fitm.detector.train import extract_features, linear_probe, train_discriminator
from fitm.errors import FitmError
from fitm.knn import knn_scores, leave_one_out_scores, pixel_vectors
from fitm.run import Run, detector_key, fakes_key, score_model_key, summary_path
from fitm.runtime import Runtime, log
from fitm.sde.degenerate import degenerate_fraction
from fitm.sde.early_stop import AutoChoice, fakes_signal
from fitm.sde.sampling import nfe
from fitm.sde.train import ema_model, generate_fakes, snapshot_steps, train_score_model
from fitm.io import save_csv

FIXED_CLASS_COUNTS = {"cifar10": 10, "cifar100": 20}


@dataclass
class Task:
    """One dataset and normal class: its run folder, its (validated) config, its data and where it runs."""

    run: Run
    config: ConfigDict
    split: Split
    runtime: Runtime


# --- generate ---------------------------------------------------------------------------------------------

def generate(task: Task, force: bool = False) -> np.ndarray:
    """Train the score model on the normal class, then sample fakes from the chosen early-stop checkpoint. A grey
    class gets grey fakes from every fakes.source: colour would be a cue that no test image carries."""
    run, config, split, runtime = task.run, task.config, task.split, task.runtime
    start = time.perf_counter()
    key = fakes_key(config, split)
    if not force and (fakes := run.load_fakes(key)) is not None:
        log.info("generate: %s is up to date, skipped", run.path("fakes.npy"))
        return fakes

    if is_grayscale(split.normal_train):
        log.info("generate: grayscale normal class (R = G = B in every image): grey fakes%s",
                 ", from a one-channel score model" if config.fakes.source == "sde" else "")
    fakes = _score_model_fakes(task, key, force) if config.fakes.source == "sde" else _cheap_fakes(task, key)
    run.record_duration("generate", time.perf_counter() - start)
    return fakes


def _score_model_fakes(task: Task, key: str, force: bool) -> np.ndarray:
    """Train the score model as far as fakes.checkpoint needs, then sample the fakes from the snapshot it names."""
    run, config, split, runtime = task.run, task.config, task.split, task.runtime
    if force:
        run.sde.discard()
    run.sde.prepare(score_model_key(config, split.normal_train))
    runtime.barrier()  # stale checkpoints are gone before any rank looks for one
    snapshots = snapshot_steps(config.training)
    if config.fakes.checkpoint == "auto":
        auto = AutoChoice(run.sde, split.normal_train, config, runtime)
        trained = train_score_model(split.normal_train, config, run.sde, runtime, after_snapshot=auto.observe)
        step, signal = auto.step, auto.rows(snapshots)
        if run.writer:
            save_csv(signal, run.sde.auto_table)
        log.info("generate: fakes.checkpoint='auto' chose step %d (nearness, degenerate per snapshot: %s)", step,
                 ", ".join(f"{r['step']}: {r['nearness']:.2f}, {100 * r['degenerate']:.0f}%" for r in signal
                           if r["trained"]))
    else:
        trained = train_score_model(split.normal_train, config, run.sde, runtime,
                                    until=checkpoint_step(snapshots, config.fakes.checkpoint))
        step = trained[-1]
    skipped = [s for s in snapshots if s > trained[-1]]
    if skipped:
        log.info("generate: trained to step %d of %d; snapshots %s not trained (not needed by fakes.checkpoint=%r)",
                 trained[-1], snapshots[-1], ", ".join(map(str, skipped)), config.fakes.checkpoint)
    model = ema_model(run.sde.load_checkpoint(step), config, runtime.device)
    count = fakes_count(config, len(split.normal_train))
    if count < config.fakes.count:
        log.info("generate: %d fakes, not fakes.count=%d: never more fakes than normal training images",
                 count, config.fakes.count)
    fakes = generate_fakes(model, config, count, config.seed, runtime)
    meta = {
        "inputs": key,
        "source": "sde",
        "checkpoint": str(run.sde.checkpoint(step).relative_to(run.dir)),
        "step": step,
        "trained_steps": trained[-1],
        "snapshots_not_trained": skipped,
        "sampler": config.sampling.method,
        "corrector": config.sampling.corrector,
        "steps": config.sampling.steps,
        "nfe": nfe(config.sampling),
        "seed": config.seed,
        "count": count,
        **_fakes_facts(split, fakes, config, runtime),
    }
    _write_fakes(run, split, fakes, meta)
    log.info("generate: wrote %d fakes from step %d to %s: %.1f%% degenerate (normal images: %.1f%%), nearness "
             "%.2f", count, step, run.path("fakes.npy"), 100 * meta["degenerate_fraction"],
             100 * meta["normal_degenerate_fraction"], meta["nearness"])
    return fakes


def _cheap_fakes(task: Task, key: str) -> np.ndarray:
    """fakes.source other than 'sde': fakes made from the normal images, no score model trained."""
    run, config, split = task.run, task.config, task.split
    count = fakes_count(config, len(split.normal_train))
    fakes, parameters = cheap_fakes(split.normal_train, config.fakes, count, config.seed)
    meta = {"inputs": key, "source": config.fakes.source, **parameters, "seed": config.seed, "count": count,
            **_fakes_facts(split, fakes, config, task.runtime)}
    _write_fakes(run, split, fakes, meta)
    log.info("generate: wrote %d fakes.source=%s fakes (no score model) to %s: %.1f%% degenerate, nearness %.2f",
             count, config.fakes.source, run.path("fakes.npy"), 100 * meta["degenerate_fraction"],
             meta.get("nearness", float("nan")))
    return fakes


def _fakes_facts(split: Split, fakes: np.ndarray, config: ConfigDict, runtime: Runtime) -> dict:
    """What fakes.json says of any fakes: degenerate shares and their nearness to the normal class."""
    return {"grayscale": is_grayscale(split.normal_train),
            "degenerate_fraction": degenerate_fraction(fakes, config.fakes.degenerate),
            "normal_degenerate_fraction": degenerate_fraction(split.normal_train, config.fakes.degenerate),
            **fakes_signal(split.normal_train, fakes, config, runtime.device)}


def _write_fakes(run: Run, split: Split, fakes: np.ndarray, meta: dict) -> None:
    run.save_fakes(fakes, meta)
    if run.writer:
        report.save_normal_vs_fakes(split.normal_train, fakes, run.path("fakes.png"))


def checkpoint_step(snapshots: list[int], choice: str) -> int:
    """The snapshot a fixed fakes.checkpoint names: training stops there."""
    if choice == "last":
        return max(snapshots)
    if not str(choice).isdigit() or int(choice) not in snapshots:
        raise FitmError(f"fakes.checkpoint={choice!r}: expected 'auto', 'last' or one of the snapshot iterations "
                        f"{sorted(snapshots)}")
    return int(choice)


def external_fakes(config: ConfigDict, split: Split, path: str) -> np.ndarray:
    """Fakes made elsewhere. For CIFAR-10/100 a file holds either this class's fakes or all classes' in the
    authors' layout (sliced to this class); any other length is refused rather than guessed at."""
    fakes = load_fakes(path)
    num_classes = FIXED_CLASS_COUNTS.get(config.data.name)
    if not num_classes:
        return fakes
    per_class = fakes_count(config, len(split.normal_train))
    if len(fakes) == num_classes * per_class:
        index = class_names(config.data).index(split.class_name)
        log.info("fakes: %s holds all %d classes in the authors' layout; using class %d", path, num_classes, index)
        return slice_class(fakes, index, num_classes, f"--fakes {path}")
    if len(fakes) != per_class:
        raise FitmError(
            f"--fakes {path}: holds {len(fakes)} images, which fits neither one class's fakes ({per_class}: "
            f"fakes.count, at most the number of normal training images) nor all {num_classes} classes' in the "
            f"authors' layout ({num_classes * per_class})")
    return fakes


def run_fakes(task: Task) -> np.ndarray:
    """The fakes `fitm detect` trains on: fakes.path when set, else the run's own fakes.npy."""
    if task.config.fakes.path:
        return external_fakes(task.config, task.split, task.config.fakes.path)
    fakes = task.run.load_fakes()
    if fakes is None:
        raise FitmError(f"no fakes: pass --fakes PATH, or run `fitm generate` first to write "
                        f"{task.run.path('fakes.npy')}")
    return fakes


# --- detect -----------------------------------------------------------------------------------------------

def detect(task: Task, fakes: np.ndarray, force: bool = False) -> tuple[torch.nn.Module, dict]:
    """Fine-tune the backbone to tell normal (0) from fake (1); kept in detector/model.pt with its end-of-training
    figures (the summary: final accuracy, epochs, steps)."""
    run, config, runtime, det = task.run, task.config, task.runtime, task.config.detector
    start = time.perf_counter()
    train_images, _ = holdout(task.split.normal_train, det.holdout_fraction, config.seed)
    key = detector_key(config, task.split, fakes)
    if not force and (saved := run.load_detector(key)) is not None:
        model = create_architecture(det)
        model.load_state_dict(saved["state_dict"])
        log.info("detect: %s is up to date, skipped", run.path("detector/model.pt"))
        return model.to(runtime.device).eval(), saved.get("summary", {})

    runtime.seed(config.seed)  # the same initial weights whatever ran before in this process
    model = create_backbone(det)
    freeze(model, det.frozen_blocks)
    probe = linear_probe(model, train_images, fakes, det, runtime) if det.linear_probe else None
    rows = train_discriminator(model, train_images, fakes, det, runtime, config.seed, log_path=run.detector_log)
    summary = {"final_accuracy": rows[-1]["accuracy"], "final_balanced_accuracy": rows[-1]["balanced_accuracy"],
               "final_loss": rows[-1]["loss"], "epochs": len(rows),
               "steps": len(rows) * -(-(len(train_images) + len(fakes)) // det.batch_size)}
    if probe is not None:
        summary["probe_balanced_accuracy"] = probe
    run.save_detector(model.state_dict(), key, summary)
    log.info("detect: saved the discriminator to %s (accuracy %.3f, balanced %.3f, on normal vs fake in its last "
             "epoch)", run.path("detector/model.pt"), summary["final_accuracy"], summary["final_balanced_accuracy"])
    run.record_duration("detect", time.perf_counter() - start)
    return model.eval(), summary


def holdout(normal: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split off the normal images that set the predict threshold: never trained on, never in the bank."""
    order = np.random.default_rng(seed).permutation(len(normal))
    n_held = int(round(fraction * len(normal)))
    if n_held and len(normal) - n_held < 2:
        raise FitmError(f"detector.holdout_fraction={fraction}: leaves fewer than 2 normal training images")
    return normal[np.sort(order[n_held:])], normal[np.sort(order[:n_held])]


# --- evaluate ---------------------------------------------------------------------------------------------

def fit_bank(task: Task, model: torch.nn.Module) -> tuple[torch.Tensor, dict]:
    """The kNN bank (features of every normal training image, or of those not held out) and the predict
    threshold, saved in detector/bank.pt; returns the bank and how the threshold was set."""
    run, config, split, runtime, det = task.run, task.config, task.split, task.runtime, task.config.detector
    bank_images, held_images = holdout(split.normal_train, det.holdout_fraction, config.seed)
    bank = _finite(extract_features(model, bank_images, det, runtime), det)
    if len(held_images):
        held = _finite(extract_features(model, held_images, det, runtime), det)
        reference = knn_scores(held, bank, det.k).cpu().numpy()
    else:
        reference = leave_one_out_scores(bank, det.k).cpu().numpy()
    threshold = {"threshold": float(np.quantile(reference, det.threshold_quantile)),
                 "threshold_quantile": det.threshold_quantile,
                 "threshold_from": "held-out normals" if len(held_images) else "leave-one-out scores of the bank"}
    run.save_bank(bank, threshold["threshold"], tuple(split.normal_train.shape[1:]))
    return bank, threshold


def evaluate(task: Task, model: torch.nn.Module, summary: dict, nnd: bool = False, fsde: str | None = None) -> dict:
    """Score the test set, run the CIFAR-10 evaluations asked for, locate the anomalies, and write metrics,
    scores.csv and the report."""
    start = time.perf_counter()
    check_cifar10_evaluations(task.config, nnd, fsde)
    score, test_scores, result = score_test_set(task, model, summary)
    normal_scores = test_scores[task.split.test_labels == 0]
    result.update(cifar10_evaluations(task, normal_scores, score, nnd, fsde))
    maps_of = localize(task, model, result)
    task.run.record_duration("evaluate", time.perf_counter() - start)
    write_evaluation(task, result, test_scores, maps_of)
    return result


def score_test_set(task: Task, model: torch.nn.Module, summary: dict) -> tuple[Callable, np.ndarray, dict]:
    """The bank and threshold, the test set's kNN scores and metrics (per defect type and at the threshold too), and
    kNN on raw pixels beside them; returns the scoring function too (images -> scores), for the further
    evaluations."""
    split, runtime, det = task.split, task.runtime, task.config.detector
    bank, threshold = fit_bank(task, model)
    score = lambda images: knn_scores(_finite(extract_features(model, images, det, runtime), det), bank,
                                      det.k).cpu().numpy()

    test_scores = score(split.test_images)
    result = {"class": split.class_name, **compute_metrics(test_scores, split.test_labels)}
    result["n_train"], result["n_test"] = len(bank), len(test_scores)
    result["pixel_knn_auroc"] = compute_metrics(pixel_knn_scores(split, det.k, runtime.device),
                                                split.test_labels)["auroc"]
    result["detector"] = summary
    result.update(threshold)
    result["confusion"] = confusion(test_scores, split.test_labels, threshold["threshold"])
    result["auroc_per_defect"] = auroc_per_group(test_scores, split.test_labels, split.test_groups)
    if result["pixel_knn_auroc"] > result["auroc"]:
        log.warning("evaluate: kNN on the raw pixels scores higher on this test set (AUROC %.4f against %.4f)",
                    result["pixel_knn_auroc"], result["auroc"])
    return score, test_scores, result


def write_evaluation(task: Task, result: dict, test_scores: np.ndarray, maps_of: Callable | None = None) -> None:
    """metrics.json, scores.csv (one row per test image) and, on the main rank, the pictures and report.html (with
    `maps_of`, test indices -> their anomaly maps, the map pictures too)."""
    run, split = task.run, task.split
    rows = [
        {
            "index": i,
            "group": split.test_groups[i],
            "label": int(split.test_labels[i]),
            "score": float(test_scores[i]),
            "path": "" if split.test_paths is None else split.test_paths[i],
        }
        for i in range(len(test_scores))
    ]
    run.save_results(result, rows)
    if run.writer:
        report.draw(run, test_images=split.test_images, maps_of=maps_of, masks=split.test_masks,
                    config=task.config)


def fit_patch_bank(task: Task, model: torch.nn.Module) -> torch.Tensor | None:
    """The normal training images' patch tokens that anomaly maps are scored against, saved in detector/patches.pt;
    None (with one log line) for a backbone without patch tokens or a feature map."""
    det = task.config.detector
    bank_images, _ = holdout(task.split.normal_train, det.holdout_fraction, task.config.seed)
    try:
        patches = patch_bank(model, bank_images, det, task.runtime, task.config.seed)
    except NoPatchTokens as e:
        log.warning("maps: %s; no anomaly maps or pixel metrics for this run", e)
        patches = None
    task.run.save_patch_bank(patches)
    return patches


def localize(task: Task, model: torch.nn.Module, result: dict) -> Callable | None:
    """The patch bank, and where the dataset has masks the anomaly maps of every test image, with their pixel AUROC
    and AUPRO (FPR up to 0.3) added to `result`. Returns test indices -> their maps, for the report (None for a
    backbone without patch tokens); without masks only the maps the report shows are computed."""
    split, det, runtime = task.split, task.config.detector, task.runtime
    patches = fit_patch_bank(task, model)
    if patches is None:
        return None
    if split.test_masks is None:
        log.info("evaluate: the test set has no ground-truth masks; image metrics only")
        return lambda index: anomaly_maps(model, split.test_images[index], patches, det, runtime)
    maps = anomaly_maps(model, split.test_images, patches, det, runtime)
    if not split.test_masks.any():
        log.warning("evaluate: every ground-truth mask is empty; no pixel metrics")
    else:
        result["pixel_auroc"], result["aupro"] = pixel_auroc(maps, split.test_masks), aupro(maps, split.test_masks)
        log.info("evaluate: pixel AUROC %.4f, AUPRO %.4f (FPR up to 0.3) over %d test images", result["pixel_auroc"],
                 result["aupro"], len(maps))
    return lambda index: maps[index]


def _finite(features: torch.Tensor, det) -> torch.Tensor:
    if not torch.isfinite(features).all():
        raise FitmError(f"detect: the detector's features are not finite (NaN or infinite weights; try a lower "
                        f"detector.lr, now {det.lr}); metrics and report are left as they were")
    return features


def pixel_knn_scores(split: Split, k: int, device) -> np.ndarray:
    """The naive reference: kNN on raw pixels of all normal training images, the bar fitm must clear."""
    queries, bank = pixel_vectors(split.test_images, device), pixel_vectors(split.normal_train, device)
    return knn_scores(queries, bank, k).cpu().numpy()


# --- the CIFAR-10 evaluations (--nnd, --fsde) ----------------------------------------------------------------

def check_cifar10_evaluations(config: ConfigDict, nnd: bool, fsde: str | None) -> None:
    """--nnd and --fsde are CIFAR-10 benchmarks: refused on any other dataset (the CLI asks before training)."""
    for option, asked, what in (("--nnd", nnd, "the near-distribution evaluation"),
                                ("--fsde", fsde, "CIFAR-10-FSDE")):
        if asked and config.data.name != "cifar10":
            raise FitmError(f"{option}: {what} is defined for --dataset cifar10 only, not {config.data.name}")


def cifar10_evaluations(task: Task, normal_scores: np.ndarray, score: Callable, nnd: bool, fsde: str | None
                        ) -> dict:
    """The results of the evaluations asked for: 'nnd' (its summary; the table goes to nnd.csv), 'fsde_auroc'."""
    results = {}
    if nnd:
        results["nnd"] = near_distribution_table(task, normal_scores, score)
    if fsde:
        results["fsde_auroc"] = fsde_auroc(task, normal_scores, score, fsde)
    return results


def fsde_auroc(task: Task, normal_scores: np.ndarray, score: Callable, path: str) -> float:
    """CIFAR-10-FSDE: the normal test class against the 1,000 fakes of that class in the benchmark file."""
    index = class_names(task.config.data).index(task.split.class_name)
    fakes = slice_class(load_fakes(path, what=f"--fsde {path}"), index, FIXED_CLASS_COUNTS["cifar10"],
                        f"--fsde {path}")
    labels = np.r_[np.zeros(len(normal_scores), np.int64), np.ones(len(fakes), np.int64)]
    return compute_metrics(np.concatenate([normal_scores, score(fakes)]), labels)["auroc"]


def near_distribution_table(task: Task, normal_scores: np.ndarray, score: Callable) -> dict:
    """NND: the normal CIFAR-10 test class against each CIFAR-100 fine class separately."""
    data = task.config.data
    images, fine_labels, fine_names = cifar100_fine_test(data.root, data.download, data.image_size)
    anomaly_scores = score(images)
    table = {}
    for label, name in enumerate(fine_names):
        chosen = anomaly_scores[fine_labels == label]
        both = np.concatenate([normal_scores, chosen])
        labels = np.r_[np.zeros(len(normal_scores), np.int64), np.ones(len(chosen), np.int64)]
        table[name] = compute_metrics(both, labels)["auroc"]
    task.run.save_table([{"cifar100_class": k, "auroc": v} for k, v in table.items()], "nnd.csv")
    worst = min(table, key=table.get)
    return {"min_auroc": table[worst], "min_class": worst, "mean_auroc": float(np.mean(list(table.values())))}


# --- across classes -----------------------------------------------------------------------------------------

def write_summary(out, dataset: str, results: list[dict]) -> str:
    """summary.csv across classes and the same table as text: per-class AUROC and the mean."""
    rows = [{"class": r["class"], "auroc": r["auroc"], "aupr": r["aupr"], "fpr95": r["fpr95"]} for r in results]
    rows.append({k: (float(np.mean([r[k] for r in rows])) if k != "class" else "mean") for k in rows[0]})
    save_csv(rows, summary_path(out, dataset))
    lines = [f"{'class':<16}{'AUROC':>8}{'AUPR':>8}{'FPR95':>8}"]
    lines += [f"{r['class']:<16}{100 * r['auroc']:>8.2f}{100 * r['aupr']:>8.2f}{100 * r['fpr95']:>8.2f}" for r in rows]
    return "\n".join(lines)
