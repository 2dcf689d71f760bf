"""Any images: <root>/train/<class>/ holds the normal images; <root>/test/<class>/ the normal test
images, and every other folder under <root>/test/ anomalous ones (the MVTec layout fits as is)."""

from fitm.configs.default import get_config as default_config


def get_config():
    c = default_config()
    c.data.name = "folder"
    c.data.normal_class = ""  # empty: the only folder under <root>/train
    return c
