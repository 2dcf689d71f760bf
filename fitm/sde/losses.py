"""Continuous denoising score matching in epsilon form (Song et al. 2021, VP-SDE with likelihood weighting off).

With x_t = a(t) x_0 + s(t) z and t ~ U(eps, 1), the loss is E_t E_z || eps_pred(x_t, t) - z ||^2, averaged over
pixels and over the batch, as the DDPM++ continuous config does (`reduce_mean=True`): the loss is O(1) per image,
so gradient clipping at 1.0 acts only now and then, as the recipe was tuned for. Writing eps_pred = -s(t) score, this is the score-matching loss
|| score + z / s(t) ||^2 weighted by lambda(t) = s(t)^2, the weighting the recipe uses."""

from __future__ import annotations

import torch

from fitm.sde.sde import VPSDE, ScoreFn, _bc


def score_from_eps(eps_fn: ScoreFn, sde: VPSDE) -> ScoreFn:
    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -eps_fn(x, t) / _bc(sde.marginal_coeffs(t)[1], x)

    return score_fn


def eps_from_score(score_fn: ScoreFn, sde: VPSDE) -> ScoreFn:
    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -score_fn(x, t) * _bc(sde.marginal_coeffs(t)[1], x)

    return eps_fn


def dsm_draws(n: int, shape: tuple[int, ...], generator: torch.Generator | None, device, eps: float = 1e-5):
    """The random part of a DSM step for n images: times t ~ U(eps, 1) and noise z ~ N(0, I)."""
    t = torch.rand(n, generator=generator, device=device) * (VPSDE.T - eps) + eps
    z = torch.randn((n, *shape), generator=generator, device=device)
    return t, z


def dsm_loss(eps_fn: ScoreFn, sde: VPSDE, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Scalar loss for a batch of clean data x0 at times t with noise z (see dsm_draws)."""
    mean, std = sde.marginal_prob(x0, t)
    pred = eps_fn(mean + std * z, t)
    return (pred.float() - z).square().mean()
