"""MVTec AD on a CPU: a category of bottle's size (209 normal training images) in 5.9 minutes on 2 cores
(BENCHMARKS.md), where configs/mvtec.py (the paper's models at 64 px) would take weeks there.

32 px images; the small score model of configs/small_cpu.py trained 800 steps; the CPU ViT (4 blocks x 128, patch 4)
at 32 px, fine-tuned with the paper's gentle recipe (SGD lr 4e-4, no momentum, batch 16, half the blocks frozen)
for at least 1,000 steps, as an MVTec category has only 60-400 normal images. Pass `--pretrained` weights for
this ViT (benchmarks/pretrain.py shows how to make some): from random weights it learns little."""

from fitm.configs.small_cpu import get_config as small_cpu_config
from fitm.configs.small_cpu import paper_fine_tuning


def get_config():
    c = small_cpu_config()
    c.data.name = "mvtec"
    c.data.normal_class = "bottle"
    c.data.image_size = 32
    c.model.ch_mult = (1, 2, 2)
    c.training.n_iters = 800
    c.training.snapshot_iters = (200, 400, 800)
    c.sampling.steps = 50
    c.sampling.batch_size = 250
    c.fakes.checkpoint = "last"
    c.detector.img_size = 32
    c.detector.resize = 36
    c.detector.maps.subsample = "coreset"  # 64 patches an image: bottle's 209 images fit the bank whole
    return paper_fine_tuning(c)
