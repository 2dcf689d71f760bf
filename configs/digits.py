"""scikit-learn's bundled 8x8 digits, upscaled to 16 px: the offline demo, small models from scratch on CPU."""

from fitm.configs.small_cpu import get_config as small_cpu_config


def get_config():
    c = small_cpu_config()
    c.data.name = "digits"
    c.training.n_iters = 600  # the whole demo within 5 minutes on 2 cores
    c.training.snapshot_iters = (100, 200, 300, 600)
    # Step 300 of 600: its grey fakes are noisy digits near the class (sde/samples_300.png; nearness of the probes
    # on class 0: 2.05 at step 100, 1.16 at 200, 1.13 at 300). From step 300 against step 200 (min_steps 500),
    # class 0 gave AUROC 86.64 against 93.55 and class 1 89.58 against 87.97 (one seed each, BENCHMARKS.md).
    c.fakes.checkpoint = "300"
    c.detector.epochs = 10
    c.detector.batch_size = 32
    # About 90 normal images and as many fakes make 6 steps an epoch: 10 epochs would be only 60 steps.
    c.detector.min_steps = 500
    return c
