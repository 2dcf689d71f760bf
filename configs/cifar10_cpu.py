"""CIFAR-10 on a 2-core CPU at 16 px: the paper's recipe scaled down, for benchmarks/quality.py.

The score model is small and trained briefly (16 px, 1,500 steps). The detector is the CPU ViT (4 blocks x 128)
fine-tuned with the paper's recipe (SGD lr 4e-4 without momentum, batch 16) but no block frozen (below). It is meant
to start from a pretrained backbone, as the paper's does: benchmarks/pretrain.py makes a stand-in trained on
CIFAR-10 classes 5-9 (`--pretrained runs/pretrained/vit_c10_5to9.pth`). On airplane with that stand-in (one seed
each, BENCHMARKS.md), the paper's recipe (half the blocks frozen, a random head) lifted the kNN AUROC from 77.98 to
81.16, where the from-scratch recipe of configs/small_cpu.py (lr 1e-2, momentum 0.9, batch 64, nothing frozen)
dropped it to 55.68. Two deviations from it, below: the head starts from a linear probe, and then every block is
trained.
"""

from fitm.configs.small_cpu import get_config as small_cpu_config
from fitm.configs.small_cpu import paper_fine_tuning


def get_config():
    c = small_cpu_config()
    c.data.name = "cifar10"
    c.model.ch_mult = (1, 2, 2)
    c.training.n_iters = 1500
    c.training.snapshot_iters = (250, 500, 1000, 1500)
    # DPM-Solver at 10 network evaluations (11 with the final denoising step) instead of Euler-Maruyama at 50: on the
    # stand-in protocol (5 classes x seeds 0-2) its fakes gave fitm +0.26 ± 2.30 against Euler-Maruyama 50's
    # (higher on 8 of 15 class-seeds), drawn 4.4 times as fast (92.6 against 21.2 fakes/s); 20 steps gave -0.13
    # against 10 (BENCHMARKS.md, samplers).
    c.sampling.method = "dpm_solver"
    c.sampling.steps = 10
    c.sampling.batch_size = 500
    # The last snapshot: on this short schedule it is still early (airplane's samples begin to draw objects only
    # by step 6,000, and the fakes' nearness still falls there). 'auto' took step 500 on 9 of 10 class-seeds of the
    # stand-in protocol, and the last snapshot's fakes did better in 9 of 10, by 0.40 on the mean (-0.26 to
    # +0.68); on the 50- and 200-image sets 'last' gave +0.36 and +0.00 on the mean (BENCHMARKS.md).
    c.fakes.checkpoint = "last"
    # fakes.count stays at the default: as many fakes as normal images, the authors' equal-sized sets.
    c = paper_fine_tuning(c)
    # A deviation from the authors, who start from a random head: the head is first fitted by a linear probe on the
    # backbone's features. On the stand-in protocol (5 classes x 2 seeds) it took fitm from 74.75 to 77.35 against
    # the stand-in's kNN 74.79, higher than the kNN on all five classes (BENCHMARKS.md, linear probe first).
    c.detector.linear_probe = True
    # A deviation from the paper's half: after the probe, every block is trained, for at least 300 steps (small
    # sets: 300 steps are 43 epochs of 50 images and 50 fakes). A 5,000-image class and its fakes take 5,000 steps
    # either way.
    c.detector.frozen_blocks = 0
    c.detector.min_steps = 300
    return c
