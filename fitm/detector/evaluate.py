"""Detection metrics: label 1 = anomalous, higher score = more anomalous."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from fitm.errors import FitmError


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = scores.detach().cpu().numpy() if torch.is_tensor(scores) else np.asarray(scores)
    labels = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    scores, labels = scores.astype(np.float64).ravel(), labels.ravel()
    if scores.shape != labels.shape:
        raise FitmError(f"metrics: {scores.size} scores but {labels.size} labels")
    if not np.isin(labels, (0, 1)).all():
        raise FitmError("metrics: labels must be 0 (normal) or 1 (anomalous)")
    if np.unique(labels).size < 2:
        raise FitmError("metrics: the test labels hold only one class; AUROC needs both normal (0) and anomalous (1)")
    if not np.isfinite(scores).all():
        raise FitmError("metrics: some anomaly scores are NaN or infinite")
    return scores, labels.astype(np.int64)


def metrics(scores, labels) -> dict:
    """AUROC, average precision with anomalies positive, and the FPR at the first threshold reaching TPR >= 0.95."""
    scores, labels = _check(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr95": float(fpr[np.argmax(tpr >= 0.95)]),
    }


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of the ROC curve, for plotting."""
    scores, labels = _check(scores, labels)
    return roc_curve(labels, scores)


def auroc_per_group(scores, labels, groups) -> dict:
    """Image AUROC of each anomalous group (an MVTec defect type, another class) against all normal test images."""
    scores, labels = _check(scores, labels)
    groups = np.asarray(groups)
    normal = labels == 0
    return {str(g): float(roc_auc_score(np.r_[np.zeros(normal.sum()), np.ones((groups == g).sum())],
                                        np.r_[scores[normal], scores[groups == g]]))
            for g in sorted(set(groups[labels == 1].tolist()))}


def confusion(scores, labels, threshold: float) -> dict:
    """Counts at the predict threshold (anomalous when score > threshold): true/false positives/negatives."""
    scores, labels = _check(scores, labels)
    called = scores > threshold
    return {"tp": int((called & (labels == 1)).sum()), "fp": int((called & (labels == 0)).sum()),
            "tn": int((~called & (labels == 0)).sum()), "fn": int((~called & (labels == 1)).sum())}
