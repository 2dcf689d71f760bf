"""CIFAR-10 from scratch on a 2-core CPU (no pretrained weights, 16 px): benchmarks/quality.py's config.

Sized so one class's whole row of benchmarks/quality.py (every variant) takes about half an hour; the
paper's GPU recipe is configs/cifar10.py."""

from fitm.configs.small_cpu import get_config as small_cpu_config


def get_config():
    c = small_cpu_config()
    c.data.name = "cifar10"
    c.model.ch_mult = (1, 2, 2)
    c.training.n_iters = 1500
    c.training.snapshot_iters = (250, 500, 1000, 1500)
    c.sampling.steps = 50
    c.sampling.batch_size = 500
    # 'auto' took step 1000 of 1500 on each class measured; over those classes its fakes gave a higher mean
    # AUROC than the last snapshot's and than noised or blurred normals (BENCHMARKS.md, quality table).
    c.fakes.checkpoint = "auto"
    c.fakes.count = 2500  # half the normal count: sampling is the generate stage's cost on a CPU
    c.detector.epochs = 8
    return c
