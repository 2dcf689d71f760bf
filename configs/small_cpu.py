"""The from-scratch recipe for a 2-core CPU that digits and cifar10_cpu share: 16 px images, a small U-Net,
a small ViT with no pretrained weights. Dataset configs layer on it."""

from fitm.configs.default import get_config as default_config


def get_config():
    c = default_config()
    c.device = "cpu"
    c.data.image_size = 16

    c.model.nf = 16
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()
    c.model.dropout = 0.0
    c.model.ema_rate = 0.999

    c.training.batch_size = 64
    # 1e-3 gives near fakes from step 500 with the clipped sampler (BENCHMARKS.md, degenerate fakes).
    c.training.lr = 1e-3
    c.training.warmup = 100
    c.training.log_every = 50

    # Euler-Maruyama: from these small, briefly trained models the deterministic samplers (DDIM, ODE)
    # give colour-noise images where the stochastic ones give the class's shapes (seen on digits).
    c.sampling.method = "euler_maruyama"
    c.sampling.steps = 100

    c.detector.backbone = "vit_tiny_patch16_224"
    c.detector.pretrained = "none"
    c.detector.needs_pretrained = False
    c.detector.arch.patch_size = 4
    c.detector.arch.depth = 4
    c.detector.arch.embed_dim = 128
    c.detector.arch.num_heads = 4
    c.detector.img_size = 16
    c.detector.resize = 18
    c.detector.frozen_blocks = 0
    c.detector.batch_size = 64
    c.detector.lr = 1e-2
    c.detector.momentum = 0.9
    # The coreset takes bank_size sequential steps, each over every token: slow on a CPU for a CIFAR class (5,000
    # images x 16 patches = 80,000 tokens), where a random subsample is one draw. mvtec_cpu keeps the coreset.
    c.detector.maps.subsample = "random"
    return c


def paper_fine_tuning(c):
    """The paper's gentle fine-tuning for a pretrained CPU ViT: SGD lr 4e-4 without momentum, batch 16, the
    first half of the blocks frozen (the paper freezes 6 of 12), 8 epochs but at least 1,000 steps (small sets).
    From the stand-in backbone on airplane (BENCHMARKS.md): the from-scratch recipe above destroys what
    pretraining gave; this one keeps it and adds to it."""
    c.detector.frozen_blocks = 2
    c.detector.lr = 4e-4
    c.detector.momentum = 0.0
    c.detector.batch_size = 16
    c.detector.epochs = 8
    c.detector.min_steps = 1000
    return c
