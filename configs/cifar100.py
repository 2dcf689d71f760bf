"""CIFAR-100 with its 20 coarse superclasses; 2,500 normal training images each."""

from fitm.configs.default import get_config as default_config


def get_config():
    c = default_config()
    c.data.name = "cifar100"
    return c
