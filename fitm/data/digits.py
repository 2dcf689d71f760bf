"""scikit-learn's bundled 8x8 digits (1,797 images, offline): a fixed, seeded, stratified 50/50
train/test split, so every run and every class sees the same test set."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fitm.data import Split

CLASSES = tuple(str(d) for d in range(10))


def load_split(data_cfg, class_name: str) -> Split:
    pixels, labels = load_digits(return_X_y=True)  # pixel values 0..16
    images = np.rint(pixels * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8, 1).repeat(3, axis=3)
    train, test = train_test_split(np.arange(len(labels)), test_size=0.5, stratify=labels, random_state=0)
    return Split.one_vs_all(images[train], labels[train], images[test], labels[test], CLASSES, class_name,
                            data_cfg.image_size)
