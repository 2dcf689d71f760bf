"""The variance-preserving SDE of Song et al. (2021): dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw on t in [0, 1],
with beta linear from beta_min to beta_max. Time `t` is a (B,) tensor; coefficients come back shaped to
broadcast against x (B, C, H, W)."""

from __future__ import annotations

from typing import Callable

import torch

from fitm.errors import FitmError

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) coefficient reshaped to broadcast over x's trailing dimensions."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


class VPSDE:
    T = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, num_scales: int = 1000):
        if num_scales < 2:
            raise FitmError(f"sde.num_scales must be an integer >= 2, got {num_scales!r}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.N = int(num_scales)

    @classmethod
    def from_config(cls, sde_cfg) -> "VPSDE":
        return cls(sde_cfg.beta_min, sde_cfg.beta_max, sde_cfg.num_scales)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean coefficient, std) of x_t | x_0 = N(a x_0, s^2 I); expm1 keeps s accurate at tiny t."""
        log_mean = self.log_mean_coeff(t)
        return log_mean.exp(), (-torch.expm1(2 * log_mean)).sqrt()

    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(a / s), the time variable of DPM-Solver: strictly decreasing in t."""
        log_mean = self.log_mean_coeff(t)
        return log_mean - 0.5 * torch.log(-torch.expm1(2 * log_mean))

    def time_of(self, half_log_snr: torch.Tensor) -> torch.Tensor:
        """The inverse of half_log_snr: the root of the quadratic -2 log a(t) = log(1 + exp(-2 lambda))."""
        minus_two_log_mean = torch.nn.functional.softplus(-2 * half_log_snr)
        delta = self.beta_max - self.beta_min
        return 2 * minus_two_log_mean / (self.beta_min + (self.beta_min**2 + 2 * delta * minus_two_log_mean).sqrt())

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta = _bc(self.beta(t), x)
        return -0.5 * beta * x, beta.sqrt()

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean_coeff, std = self.marginal_coeffs(t)
        return _bc(mean_coeff, x) * x, _bc(std, x)

    def prior_sampling(self, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    def discrete_beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta_i of the N-step DDPM chain at index floor(t (N - 1)): linspace(beta_min/N, beta_max/N, N)[i],
        computed in closed form so no table has to live on the device."""
        i = (t * (self.N - 1) / self.T).long().to(t.dtype)
        return (self.beta_min + i * (self.beta_max - self.beta_min) / (self.N - 1)) / self.N

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM ancestral step written as x_{i+1} = x_i + f + G z: f = (sqrt(alpha_i) - 1) x, G = sqrt(beta_i)."""
        beta = _bc(self.discrete_beta(t), x)
        return (1 - beta).sqrt() * x - x, beta.sqrt()

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Time reversal of `fwd` driven by `score_fn`: drift f - G^2 s (the probability-flow ODE: f - G^2 s / 2,
    no diffusion)."""

    def __init__(self, fwd: VPSDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.fwd = fwd
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = fwd.N
        self.T = fwd.T

    def _reverse(self, f, g, x, t):
        weight = 0.5 if self.probability_flow else 1.0
        f = f - g**2 * self.score_fn(x, t) * weight
        return f, torch.zeros_like(g) if self.probability_flow else g

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._reverse(*self.fwd.sde(x, t), x, t)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._reverse(*self.fwd.discretize(x, t), x, t)
