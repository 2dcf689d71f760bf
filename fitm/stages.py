"""The stages as functions: generate -> detect -> evaluate, each owning its files in the run directory.

A stage records what its outputs were made from (a fingerprint of the config sections and input arrays it
reads); when the outputs exist with the same fingerprint the stage is skipped, and `force` redoes it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ml_collections import ConfigDict

from fitm import report
from fitm.config import save_config, section
from fitm.data import Split, canonical_class, class_names, cifar100_fine_test, load_fakes, slice_class
from fitm.detector.backbone import create_architecture, create_backbone, freeze
from fitm.detector.evaluate import metrics as compute_metrics
from fitm.detector.knn import knn_scores, leave_one_out_scores, pixel_vectors
from fitm.detector.train import extract_features, train_discriminator
from fitm.errors import FitmError
from fitm.io import fingerprint, load_json, save_csv, save_json, save_npy, save_torch
from fitm.runtime import log, seed_everything
from fitm.sde.early_stop import choose_auto
from fitm.sde.sampling import nfe
from fitm.sde.train import checkpoint_step, generate_fakes, train_score_model

FIXED_CLASS_COUNTS = {"cifar10": 10, "cifar100": 20}


def run_dir(out: str | Path, config: ConfigDict) -> Path:
    return Path(out) / config.data.name / canonical_class(config.data)


@dataclass
class Run:
    """One dataset, one normal class: where its files live and what it is made of."""

    dir: Path
    config: ConfigDict
    split: Split
    device: torch.device

    @property
    def data_key(self) -> str:
        return fingerprint(section(self.config, "data"), self.split.normal_train, self.split.test_images)


# --- generate ---------------------------------------------------------------------------------------------

def generate(run: Run, force: bool = False) -> np.ndarray:
    """Train the score model on the normal class, then sample fakes from the chosen early-stop checkpoint."""
    config = run.config
    inputs = fingerprint(section(config, "seed", "sde", "model", "training", "sampling", "fakes"), run.data_key)
    fakes_path = run.dir / "fakes.npy"
    meta_path = run.dir / "fakes.json"
    if not force and fakes_path.exists() and meta_path.exists() and load_json(meta_path).get("inputs") == inputs:
        log.info("generate: %s is up to date, skipped", fakes_path)
        return np.load(fakes_path, allow_pickle=False)

    sde_dir = run.dir / "sde"
    training_inputs = fingerprint(section(config, "seed", "sde", "model", "training"), run.data_key)
    marker = sde_dir / "inputs.json"
    if sde_dir.exists() and (force or not marker.exists() or load_json(marker).get("inputs") != training_inputs):
        log.info("generate: discarding score-model checkpoints made from other inputs in %s", sde_dir)
        shutil.rmtree(sde_dir)
    save_json({"inputs": training_inputs}, marker)
    checkpoints = train_score_model(run.split.normal_train, config, sde_dir, run.device)

    if config.fakes.checkpoint == "auto":
        checkpoint, signal = choose_auto(checkpoints, run.split.normal_train, config, run.device)
        save_csv(signal, sde_dir / "auto_checkpoint.csv")
        log.info("generate: fakes.checkpoint='auto' chose %s (nearness per snapshot: %s)", checkpoint.name,
                 ", ".join(f"{r['step']}: {r['nearness']:.2f}" for r in signal))
    else:
        checkpoint = choose_checkpoint(checkpoints, config.fakes.checkpoint)
    count = config.fakes.count or len(run.split.normal_train)
    fakes = generate_fakes(checkpoint, config, count, config.seed, run.device)
    save_npy(fakes, fakes_path)
    report.save_normal_vs_fakes(run.split.normal_train, fakes, run.dir / "fakes.png")
    save_json(
        {
            "inputs": inputs,
            "checkpoint": str(checkpoint.relative_to(run.dir)),
            "sampler": config.sampling.method,
            "corrector": config.sampling.corrector,
            "steps": config.sampling.steps,
            "nfe": nfe(config.sampling),
            "seed": config.seed,
            "count": count,
        },
        meta_path,
    )
    log.info("generate: wrote %d fakes from %s to %s", count, checkpoint.name, fakes_path)
    return fakes


def choose_checkpoint(checkpoints: list[Path], choice: str) -> Path:
    by_step = {checkpoint_step(p): p for p in checkpoints}
    if choice == "last":
        return by_step[max(by_step)]
    if not choice.isdigit() or int(choice) not in by_step:
        raise FitmError(
            f"fakes.checkpoint={choice!r}: expected 'auto', 'last' or one of the saved iterations {sorted(by_step)}"
        )
    return by_step[int(choice)]


def external_fakes(run: Run, path: str) -> np.ndarray:
    """Fakes made elsewhere. For CIFAR-10/100 a file holds either this class's fakes or all classes' in the
    authors' layout (sliced to this class); any other length is refused rather than guessed at."""
    fakes = load_fakes(path)
    num_classes = FIXED_CLASS_COUNTS.get(run.config.data.name)
    if not num_classes:
        return fakes
    per_class = run.config.fakes.count or len(run.split.normal_train)
    if len(fakes) == num_classes * per_class:
        index = class_names(run.config.data).index(run.split.class_name)
        log.info("fakes: %s holds all %d classes in the authors' layout; using class %d", path, num_classes, index)
        return slice_class(fakes, index, num_classes, f"--fakes {path}")
    if len(fakes) != per_class:
        raise FitmError(
            f"--fakes {path}: holds {len(fakes)} images, which fits neither one class's fakes ({per_class}, "
            f"{'fakes.count' if run.config.fakes.count else 'the number of normal training images'}) nor all "
            f"{num_classes} classes' in the authors' layout ({num_classes * per_class})")
    return fakes


# --- detect -----------------------------------------------------------------------------------------------

def detect(run: Run, fakes: np.ndarray, force: bool = False) -> torch.nn.Module:
    """Fine-tune the ViT to tell normal (0) from fake (1); kept in detector/model.pt."""
    det = run.config.detector
    inputs = fingerprint(section(run.config, "seed", "detector"), run.data_key, fakes)
    model_path = run.dir / "detector" / "model.pt"
    if not force and model_path.exists():
        saved = torch.load(model_path, map_location="cpu", weights_only=True)
        if saved.get("inputs") == inputs:
            model = create_architecture(det)
            model.load_state_dict(saved["state_dict"])
            log.info("detect: %s is up to date, skipped", model_path)
            return model.to(run.device).eval()

    seed_everything(run.config.seed)  # the same initial weights whatever ran before in this process
    model = create_backbone(det)
    train_images, _ = holdout(run.split.normal_train, det.holdout_fraction, run.config.seed)
    freeze(model, det.frozen_blocks)
    model.to(run.device)
    train_discriminator(
        model, train_images, fakes, det, run.device, run.config.seed, log_path=run.dir / "detector" / "train_log.csv"
    )
    save_torch({"state_dict": model.state_dict(), "inputs": inputs}, model_path)
    log.info("detect: saved the discriminator to %s", model_path)
    return model.eval()


def holdout(normal: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split off the normal images that set the predict threshold: never trained on, never in the bank."""
    order = np.random.default_rng(seed).permutation(len(normal))
    n_held = int(round(fraction * len(normal)))
    if n_held and len(normal) - n_held < 2:
        raise FitmError(f"detector.holdout_fraction={fraction}: leaves fewer than 2 normal training images")
    return normal[np.sort(order[n_held:])], normal[np.sort(order[:n_held])]


# --- evaluate ---------------------------------------------------------------------------------------------

def evaluate(run: Run, model: torch.nn.Module, nnd: bool = False, fsde: str | None = None) -> dict:
    """kNN scores of the test set against the normal training features; metrics, scores.csv, pictures."""
    config, det = run.config, run.config.detector
    bank_images, held_images = holdout(run.split.normal_train, det.holdout_fraction, config.seed)
    bank = extract_features(model, bank_images, det, run.device)
    score = lambda images: knn_scores(extract_features(model, images, det, run.device), bank, det.k).cpu().numpy()

    test_scores = score(run.split.test_images)
    result = {"class": run.split.class_name, **compute_metrics(test_scores, run.split.test_labels)}
    result["n_train"], result["n_test"] = len(bank_images), len(test_scores)
    result["pixel_knn_auroc"] = compute_metrics(pixel_knn_scores(run, det.k), run.split.test_labels)["auroc"]

    reference_scores = score(held_images) if len(held_images) else leave_one_out_scores(bank, det.k).cpu().numpy()
    threshold = float(np.quantile(reference_scores, det.threshold_quantile))
    result["threshold"] = threshold
    result["threshold_quantile"] = det.threshold_quantile
    result["threshold_from"] = "held-out normals" if len(held_images) else "leave-one-out scores of the bank"
    save_torch(
        {
            "features": bank.cpu(),
            "threshold": threshold,
            "image_shape": torch.tensor(run.split.normal_train.shape[1:]),
        },
        run.dir / "detector" / "bank.pt",
    )

    normal_scores = test_scores[run.split.test_labels == 0]
    if nnd:
        result["nnd"] = near_distribution_table(run, normal_scores, score)
    if fsde:
        result["fsde_auroc"] = fsde_auroc(run, normal_scores, score, fsde)

    rows = [
        {
            "index": i,
            "group": run.split.test_groups[i],
            "label": int(run.split.test_labels[i]),
            "score": float(test_scores[i]),
            "path": "" if run.split.test_paths is None else run.split.test_paths[i],
        }
        for i in range(len(test_scores))
    ]
    save_csv(rows, run.dir / "scores.csv")
    save_json(result, run.dir / "metrics.json")
    report.draw(run.dir, test_images=run.split.test_images)
    return result


def pixel_knn_scores(run: Run, k: int) -> np.ndarray:
    """The naive reference: kNN on raw pixels of all normal training images, the bar fitm must clear."""
    queries, bank = pixel_vectors(run.split.test_images, run.device), pixel_vectors(run.split.normal_train, run.device)
    return knn_scores(queries, bank, k).cpu().numpy()


def fsde_auroc(run: Run, normal_scores: np.ndarray, score, path: str) -> float:
    """CIFAR-10-FSDE: the normal test class against the 1,000 fakes of that class in the benchmark file."""
    if run.config.data.name != "cifar10":
        raise FitmError("--fsde: CIFAR-10-FSDE is defined for --dataset cifar10 only")
    index = class_names(run.config.data).index(run.split.class_name)
    fakes = slice_class(load_fakes(path), index, FIXED_CLASS_COUNTS["cifar10"], f"--fsde {path}")
    labels = np.r_[np.zeros(len(normal_scores), np.int64), np.ones(len(fakes), np.int64)]
    return compute_metrics(np.concatenate([normal_scores, score(fakes)]), labels)["auroc"]


def near_distribution_table(run: Run, normal_scores: np.ndarray, score) -> dict:
    """NND: the normal CIFAR-10 test class against each CIFAR-100 fine class separately."""
    if run.config.data.name != "cifar10":
        raise FitmError("--nnd: the near-distribution evaluation is defined for --dataset cifar10 only")
    data = run.config.data
    images, fine_labels, fine_names = cifar100_fine_test(data.root, data.download, data.image_size)
    anomaly_scores = score(images)
    table = {}
    for label, name in enumerate(fine_names):
        chosen = anomaly_scores[fine_labels == label]
        both = np.concatenate([normal_scores, chosen])
        labels = np.r_[np.zeros(len(normal_scores), np.int64), np.ones(len(chosen), np.int64)]
        table[name] = compute_metrics(both, labels)["auroc"]
    save_csv([{"cifar100_class": k, "auroc": v} for k, v in table.items()], run.dir / "nnd.csv")
    worst = min(table, key=table.get)
    return {"min_auroc": table[worst], "min_class": worst, "mean_auroc": float(np.mean(list(table.values())))}


def save_run_config(run: Run) -> None:
    save_config(run.config, run.dir / "config.json")


def write_summary(dataset_dir: Path, results: list[dict]) -> str:
    """summary.csv across classes and the same table as text: per-class AUROC and the mean."""
    rows = [{"class": r["class"], "auroc": r["auroc"], "aupr": r["aupr"], "fpr95": r["fpr95"]} for r in results]
    rows.append({k: (float(np.mean([r[k] for r in rows])) if k != "class" else "mean") for k in rows[0]})
    save_csv(rows, dataset_dir / "summary.csv")
    lines = [f"{'class':<16}{'AUROC':>8}{'AUPR':>8}{'FPR95':>8}"]
    lines += [f"{r['class']:<16}{100 * r['auroc']:>8.2f}{100 * r['aupr']:>8.2f}{100 * r['fpr95']:>8.2f}" for r in rows]
    return "\n".join(lines)
