"""scikit-learn's bundled 8x8 digits, upscaled to 16 px: the offline demo, small models from scratch on CPU."""

from fitm.configs.small_cpu import get_config as small_cpu_config


def get_config():
    c = small_cpu_config()
    c.data.name = "digits"
    c.training.n_iters = 600  # the whole demo within 5 minutes on 2 cores
    c.training.snapshot_iters = (100, 200, 300, 600)
    # Step 300 of 600: its fakes are noisy zeros, twos, ... (sde/samples_300.png), near the class but not of it
    # (nearness 2.11 on class 0; step 200: 3.65, step 100: 17.3, colour noise; step 600: 1.43, nearly normal).
    # With min_steps 500, classes 0 / 1 / 2 gave AUROC 94.89 / 90.48 / 77.86 from step 300 against
    # 89.42 / 91.24 / 75.33 from step 200 (one seed each, BENCHMARKS.md).
    c.fakes.checkpoint = "300"
    c.detector.epochs = 10
    c.detector.batch_size = 32
    # About 90 normal images and as many fakes make 6 steps an epoch: 10 epochs were 60 steps, after which the
    # detector told step 300's fakes from normals only 71% of the time (AUROC 79.94 on class 0, against 94.89
    # with at least 500 steps).
    c.detector.min_steps = 500
    return c
