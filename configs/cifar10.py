"""CIFAR-10, one class normal: the paper's setting on GPU (ViT-B/16 from Google's ViT-B_16.npz)."""

from fitm.configs.default import get_config as default_config


def get_config():
    c = default_config()
    c.data.name = "cifar10"
    return c
