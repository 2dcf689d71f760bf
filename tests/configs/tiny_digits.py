"""Digits at 8 px with the smallest models that still learn: end-to-end tests in seconds."""

from fitm.configs.digits import get_config as digits_config


def get_config():
    c = digits_config()
    c.data.image_size = 8
    c.model.nf = 8
    c.model.ch_mult = (1, 2)
    c.model.attn_resolutions = (4,)
    c.training.batch_size = 16
    c.training.n_iters = 20
    c.training.snapshot_iters = (10, 20)
    c.training.warmup = 5
    c.training.log_every = 5
    c.sampling.steps = 5
    c.fakes.checkpoint = "10"
    c.detector.arch.patch_size = 4
    c.detector.arch.depth = 2
    c.detector.arch.embed_dim = 32
    c.detector.arch.num_heads = 2
    c.detector.img_size = 8
    c.detector.resize = 8
    c.detector.epochs = 2
    c.detector.min_steps = 0
    c.detector.feature_batch_size = 128
    return c
