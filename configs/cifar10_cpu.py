"""CIFAR-10 on a 2-core CPU at 16 px: the paper's recipe scaled down, for benchmarks/quality.py.

The score model is small and trained briefly (16 px, 1,500 steps). The detector is the CPU ViT (4 blocks x 128)
fine-tuned with the paper's recipe: SGD lr 4e-4 without momentum, batch 16, the first half of the blocks
frozen. It is meant to start from a pretrained backbone, as the paper's does: benchmarks/pretrain.py makes a
stand-in trained on CIFAR-10 classes 5-9 (`--pretrained runs/pretrained/vit_c10_5to9.pth`). On airplane with that
stand-in (one seed each, BENCHMARKS.md), this recipe lifted the kNN AUROC from 77.98 to 81.16, where the
from-scratch recipe of configs/small_cpu.py (lr 1e-2, momentum 0.9, batch 64, nothing frozen) dropped it to 55.68.
Its head starts from a linear probe (below).
"""

from fitm.configs.small_cpu import get_config as small_cpu_config
from fitm.configs.small_cpu import paper_fine_tuning


def get_config():
    c = small_cpu_config()
    c.data.name = "cifar10"
    c.model.ch_mult = (1, 2, 2)
    c.training.n_iters = 1500
    c.training.snapshot_iters = (250, 500, 1000, 1500)
    c.sampling.steps = 50
    c.sampling.batch_size = 500
    # The last snapshot: on this short schedule it is still early (airplane's samples begin to draw objects only
    # by step 6,000, and the fakes' nearness still falls there). 'auto' took step 500 on 9 of 10 class-seeds of the
    # stand-in protocol, and the last snapshot's fakes did better in 9 of 10, by 0.40 on the mean (-0.26 to
    # +0.68); on the 50- and 200-image sets 'last' gave +0.36 and +0.00 on the mean (BENCHMARKS.md).
    c.fakes.checkpoint = "last"
    c.fakes.count = 2500  # half the normal count: sampling is the generate stage's cost on a CPU
    # Small sets: at batch 16, 50 normal images and 50 fakes make 7 steps an epoch; the recipe's at least 1,000
    # steps hold whatever the set's size (a 5,000-image class takes 3,750 in its 8 epochs).
    c = paper_fine_tuning(c)
    # A deviation from the authors, who start from a random head: the head is first fitted by a linear probe on the
    # backbone's features. On the stand-in protocol (5 classes x 2 seeds) it took fitm from 74.75 to 77.35 against
    # the stand-in's kNN 74.79, higher than the kNN on all five classes (BENCHMARKS.md, linear probe first).
    c.detector.linear_probe = True
    return c
