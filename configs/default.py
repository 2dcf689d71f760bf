"""The one default every dataset config layers on: the FITYMI paper's recipe on GPU.

Detector facts: Mirzaei et al., ICLR 2023 (authors' code). Score-model facts: Song et al. 2021,
VP-SDE "DDPM++ continuous" CIFAR-10 recipe.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.device = "auto"  # auto, cpu, cuda, cuda:N

    c.data = d = ConfigDict()
    d.name = "cifar10"
    d.normal_class = "0"  # index or name; an MVTec category; a folder dataset's train/<class>
    d.root = ""
    d.download = False
    d.image_size = 32  # side at which images are stored and the score model works (stored square)

    # Generate stage: the VP-SDE and its score network.
    c.sde = s = ConfigDict()
    s.beta_min = 0.1
    s.beta_max = 20.0
    s.num_scales = 1000

    c.model = m = ConfigDict()  # DDPM++ U-Net
    m.nf = 128
    m.ch_mult = (1, 2, 2, 2)
    m.num_res_blocks = 4
    m.attn_resolutions = (16,)
    m.dropout = 0.1
    m.skip_rescale = True
    m.resblock_resample = True  # BigGAN-style up/down-sampling residual blocks
    m.ema_rate = 0.9999

    c.training = t = ConfigDict()
    t.batch_size = 128
    t.n_iters = 20000
    t.snapshot_iters = (2500, 5000, 10000, 15000, 20000)  # the early-stop candidates
    t.lr = 2e-4
    t.warmup = 5000
    t.grad_clip = 1.0
    t.eps = 1e-5  # smallest t in denoising score matching
    t.log_every = 100
    t.amp = True  # bf16 autocast on GPU
    t.compile = False  # torch.compile the U-Net (training and sampling); same outputs, compiled once per shape
    t.channels_last = False  # the U-Net in channels_last memory format (benchmarks/gpu.py measures it on a GPU)

    c.sampling = p = ConfigDict()
    p.method = "ddim"  # euler_maruyama, reverse_diffusion, ode, ddim, dpm_solver
    p.corrector = "none"  # none, langevin
    p.snr = 0.16
    p.corrector_steps = 1
    p.steps = 100  # predictor steps, one network evaluation each (ode: ignored, adaptive)
    # dpm_solver: multistep order, 2 or 3. On Gaussian data (tests/unit/test_sde.py) order 2 is the nearer at 10
    # steps, order 3 at 20.
    p.order = 2
    p.eps = 1e-3
    p.denoise = True
    # Clip each step's denoised estimate to the data range, as DDPM's sampler does (score_sde's does not): with it,
    # 0% of airplane's fakes were flat or saturated at snapshots 500 and 1000 of configs/cifar10_cpu.py, against
    # 43% and 34% without (Euler-Maruyama, 50 steps; BENCHMARKS.md). False reproduces score_sde's samplers.
    p.clip_denoised = True
    p.batch_size = 1000
    p.ode_tol = 1e-5

    c.fakes = f = ConfigDict()
    # Where fakes come from: 'sde' (the score model, the method), or made from the normal images without one:
    # 'noised' (Gaussian noise of std noise_std, 0-255 scale), 'blurred' (blur_sigma px), 'cutpaste' (a patch of
    # each image pasted elsewhere in it); the yardsticks the score model's fakes must beat (fitm/data/cheap_fakes.py).
    f.source = "sde"
    f.noise_std = 25.5
    f.blur_sigma = 1.5
    # A snapshot iteration (training stops there), 'last' (trains to training.n_iters), or 'auto' (see
    # fitm/sde/early_stop.py: it measures each snapshot as it is written and stops training once its choice has
    # stayed the same over `patience` further snapshots).
    f.checkpoint = "5000"
    f.auto_ratio = 1.1  # 'auto': earliest snapshot within this factor of the nearest snapshot's nearness
    # 'auto' settles once its choice has survived this many further snapshots. On configs/cifar10_cpu.py's four
    # snapshots (seed 0, five classes; BENCHMARKS.md) 2 chose what all four chose in 5 of 5 classes, 1 in 2 of 5.
    f.patience = 2
    f.count = 0  # 0: as many fakes as normal training images; never more (config.fakes_count)
    f.path = ""  # use fakes from this .npy instead of generating them
    # Degenerate fakes (recorded in fakes.json, never filtered): per-image pixel std below flat_std, or mean
    # below dark_mean or above bright_mean, on the 0-255 scale. 0.0-1.4% of a CIFAR-10 class's training images
    # meet it at 16 px (airplane 0.9%, BENCHMARKS.md).
    f.degenerate = ConfigDict({"flat_std": 20.0, "dark_mean": 15.0, "bright_mean": 240.0})

    # Detect stage: the FITYMI discriminator.
    c.detector = v = ConfigDict()
    v.backbone = "vit_base_patch16_224"
    v.pretrained = ""  # Google .npz, .pth/.safetensors, a timm hub name, or 'none'
    v.needs_pretrained = True  # refuse to run without weights: from scratch ViT-B is poor
    v.arch = ConfigDict({"patch_size": None, "depth": None, "embed_dim": None, "num_heads": None})
    v.img_size = 224
    v.resize = 256  # resize then crop to img_size (random in training, centre at test)
    v.normalize = "imagenet"  # the authors' choice; 'inception' is mean/std 0.5, as the weights were trained
    v.frozen_blocks = 6
    v.dropout = 0.1  # the authors' ViT: after the embeddings and twice in every MLP, none in attention
    v.epochs = 30
    v.min_steps = 0  # at least this many SGD steps, whatever the epochs (small sets need more epochs)
    v.batch_size = 16
    v.lr = 4e-4
    v.weight_decay = 5e-5
    v.momentum = 0.0
    # Fit the 2-way head by logistic regression on the frozen features before fine-tuning (LP-FT). The authors
    # start from a random head; the CPU configs deviate (BENCHMARKS.md, linear probe first).
    v.linear_probe = False
    v.amp = True  # bf16 autocast on GPU (the authors train in fp32: detector.amp=false); full precision on CPU
    v.compile = False  # torch.compile the ViT for training and features
    v.k = 2
    v.feature_batch_size = 256
    # The kNN bank is every normal training image, as the authors'. The predict threshold is the
    # threshold_quantile of the bank's leave-one-out kNN scores; holdout_fraction > 0 instead keeps that share
    # of the normal images out of training and the bank and takes the quantile of their scores.
    v.holdout_fraction = 0.0
    v.threshold_quantile = 0.95
    # Anomaly maps: each patch token of the fine-tuned backbone scored by the sum of squared L2 distances to its k
    # nearest tokens of the normal training images (a bank of at most bank_size tokens: a greedy k-center coreset,
    # as PatchCore's, or a random subsample, of the normal images' tokens when there are more), upsampled to the
    # image and smoothed by a Gaussian of sigma pixels of the detector's input (detector.img_size; 0: none).
    v.maps = ConfigDict({"k": 1, "bank_size": 16384, "subsample": "coreset", "sigma": 4.0})
    return c
