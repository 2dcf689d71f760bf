"""scikit-learn's bundled 8x8 digits, upscaled to 16 px: the offline demo, small models from scratch on CPU."""

from fitm.configs.small_cpu import get_config as small_cpu_config


def get_config():
    c = small_cpu_config()
    c.data.name = "digits"
    c.training.n_iters = 600  # the whole demo within 5 minutes on 2 cores
    c.training.snapshot_iters = (100, 200, 300, 600)
    c.fakes.checkpoint = "300"  # half-way: digit shapes mixed with noise in sde/samples_300.png
    c.detector.epochs = 10
    c.detector.batch_size = 32
    return c
