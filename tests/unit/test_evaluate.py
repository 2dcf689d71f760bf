import numpy as np
import pytest
import torch

from fitm.detector.evaluate import metrics, roc_points
from fitm.errors import FitmError


def test_hand_computed_metrics():
    # Ranked by score: 0.8 (anomaly), 0.4 (normal), 0.35 (anomaly), 0.1 (normal).
    m = metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert m["auroc"] == pytest.approx(0.75)  # 3 of the 4 anomaly-normal pairs ordered right
    assert m["aupr"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["fpr95"] == pytest.approx(0.5)  # catching both anomalies also flags the 0.4 normal


def test_perfect_reversed_and_tied_scores():
    labels = np.array([0] * 20 + [1] * 20)
    perfect = metrics(np.arange(40.0), labels)
    assert perfect == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    reversed_ = metrics(-np.arange(40.0), labels)
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0
    assert metrics(np.ones(40), labels)["auroc"] == 0.5


def test_fpr95_takes_first_threshold_reaching_tpr95():
    # 20 anomalies: 19 score above every normal, 1 sits below 3 of the 10 normals.
    scores = np.r_[np.arange(10.0), np.full(19, 100.0), 6.5]
    labels = np.r_[np.zeros(10), np.ones(20)]
    assert metrics(scores, labels)["fpr95"] == pytest.approx(0.0)  # 19/20 = 0.95 already
    labels = np.r_[np.zeros(10), np.ones(18), 0, 1]  # now only 18 above: the 6.5 one is needed
    scores = np.r_[np.arange(10.0), np.full(18, 100.0), 100.0, 6.5]
    assert metrics(scores, labels)["fpr95"] == pytest.approx(4 / 11)


def test_accepts_tensors_and_roc_points():
    scores, labels = torch.tensor([0.2, 0.9, 0.1, 0.7]), torch.tensor([0, 1, 0, 1])
    assert metrics(scores, labels)["auroc"] == 1.0
    fpr, tpr, thresholds = roc_points(scores, labels)
    assert fpr[0] == 0 and tpr[-1] == 1 and len(fpr) == len(tpr) == len(thresholds)


def test_bad_labels_raise():
    with pytest.raises(FitmError, match="only one class"):
        metrics([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(FitmError, match="only one class"):
        roc_points([0.1, 0.2], [0, 0])
    with pytest.raises(FitmError, match="0 \\(normal\\) or 1"):
        metrics([0.1, 0.2], [0, 2])
    with pytest.raises(FitmError, match="3 scores but 2 labels"):
        metrics([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(FitmError, match="NaN"):
        metrics([0.1, np.nan], [0, 1])
