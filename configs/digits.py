"""scikit-learn's bundled 8x8 digits, upscaled to 16 px: the offline demo, small models from scratch on CPU."""

from fitm.configs.small_cpu import get_config as small_cpu_config


def get_config():
    c = small_cpu_config()
    c.data.name = "digits"
    c.training.n_iters = 600  # the whole demo within 5 minutes on 2 cores
    c.training.snapshot_iters = (100, 200, 300, 600)
    # Step 100 of 600: in the digits study (BENCHMARKS.md, classes 0-3) its still noise-like fakes gave the
    # best mean AUROC (82.18, against 78.84 / 79.71 / 71.60 at steps 200 / 300 / 600); with 90 normal images
    # the small ViT learns less from nearer fakes, and 'auto' would take step 600, the worst.
    c.fakes.checkpoint = "100"
    c.detector.epochs = 10
    c.detector.batch_size = 32
    return c
