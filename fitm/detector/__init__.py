"""The detect stage's parts: the backbone adapter, batched transforms, training, feature extraction, metrics."""

from fitm.detector.backbone import create_backbone, features, freeze
from fitm.detector.evaluate import metrics, roc_points
from fitm.detector.train import extract_features, linear_probe, train_discriminator
from fitm.detector.transforms import BatchTransform

__all__ = [
    "BatchTransform",
    "create_backbone",
    "extract_features",
    "features",
    "freeze",
    "linear_probe",
    "metrics",
    "roc_points",
    "train_discriminator",
]
