"""Any images: <root>/train/<class>/ holds the normal images; <root>/test/<class>/ the normal test
images, and every other folder under <root>/test/ anomalous ones (the MVTec layout fits as is)."""

from fitm.configs.default import get_config as default_config


def get_config():
    c = default_config()
    c.data.name = "folder"
    c.data.normal_class = ""  # empty: the only folder under <root>/train
    # A folder of one's own is often small: at batch 16, 50 normal images and 50 fakes make 7 SGD steps an epoch,
    # 210 in the recipe's 30 epochs, where a CIFAR-10 class gets 18,750. At least 1,000, as configs/mvtec_cpu.py.
    c.detector.min_steps = 1000
    return c
