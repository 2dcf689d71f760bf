"""Generate stage: a VP-SDE score model trained on the normal class, and fakes sampled from its snapshots."""

from fitm.sde.losses import dsm_draws, dsm_loss, eps_from_score, score_from_eps
from fitm.sde.sampling import check_sampling_config, nfe, sample
from fitm.sde.sde import VPSDE
from fitm.sde.train import ScoreTrainer, ema_model, generate_fakes, model_eps_fn, to_uint8, train_score_model
from fitm.sde.unet import ScoreUNet, count_parameters

__all__ = [
    "VPSDE",
    "ScoreTrainer",
    "ScoreUNet",
    "check_sampling_config",
    "count_parameters",
    "dsm_draws",
    "dsm_loss",
    "ema_model",
    "eps_from_score",
    "generate_fakes",
    "model_eps_fn",
    "nfe",
    "sample",
    "score_from_eps",
    "to_uint8",
    "train_score_model",
]
