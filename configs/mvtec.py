"""MVTec AD: high-resolution objects and textures with few (60-400) normal images per category.

Images are stored at 64 px for the score model; the detector uses the paper's high-resolution
schedule (lr 5e-3, 150 epochs)."""

from fitm.configs.default import get_config as default_config


def get_config():
    c = default_config()
    c.data.name = "mvtec"
    c.data.normal_class = "bottle"
    c.data.image_size = 64
    c.model.attn_resolutions = (16,)
    c.detector.lr = 5e-3
    c.detector.epochs = 150  # >= 1,200 SGD steps even for the smallest category (toothbrush: 60 normal images)
    return c
