"""Samplers for the reverse VP-SDE, batched and seeded; they return samples in data space ([-1, 1] scale).

All of them start from the prior at t = 1 and stop at t = sampling.eps, then (with sampling.denoise) take the
Tweedie step E[x_0 | x_eps] = (x + s^2 score) / a at t = eps. With sampling.clip_denoised every network output
is replaced by the one whose denoised estimate x_0 = (x - s eps) / a is clipped to the data range [-1, 1], as
DDPM's sampler does (score_sde's does not): without it, the samples of a briefly trained model drift out of
range and end as flat, black or white squares (BENCHMARKS.md, degenerate fakes).
- euler_maruyama / reverse_diffusion: predictor-corrector sampling (Song et al. 2021) over `steps` predictor
  steps, optionally preceded at each step by `corrector_steps` Langevin steps at signal-to-noise ratio `snr`.
  The reverse-diffusion predictor and the corrector use the DDPM chain with N = steps, so the ancestral step
  matches the time grid whatever `steps` is.
- ode: the probability-flow ODE solved by scipy's adaptive RK45 at rtol = atol = ode_tol.
- ddim: deterministic DDIM (eta = 0) on the VP SDE's continuous alphas, `steps` network evaluations + denoise.
- dpm_solver: the multistep DPM-Solver++ (Lu et al. 2022) of order `order` (2 or 3) for the probability-flow ODE,
  written in the half log-SNR lambda = log(a / s) and the denoised estimate x_0, on a grid uniform in lambda;
  `steps` network evaluations (+ denoise). Its first steps, and with fewer than 15 steps its last ones, use lower
  orders, as the reference solver does. DDIM is its first-order case.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from fitm.errors import FitmError
from fitm.sde.losses import eps_from_score, score_from_eps
from fitm.sde.sde import VPSDE, ScoreFn, _bc

METHODS = ("euler_maruyama", "reverse_diffusion", "ode", "ddim", "dpm_solver")
DPM_ORDERS = (2, 3)
LOWER_ORDER_FINAL_BELOW = 15  # steps: fewer than these end on lower orders (the reference solver's choice)
CORRECTORS = ("none", "langevin")


def check_sampling_config(cfg) -> None:
    """Refuse a bad sampling section before any work is spent on it."""
    if cfg.method not in METHODS:
        raise FitmError(f"sampling.method={cfg.method!r} is unknown (expected one of {', '.join(METHODS)})")
    if cfg.corrector not in CORRECTORS:
        raise FitmError(f"sampling.corrector={cfg.corrector!r} is unknown (expected one of {', '.join(CORRECTORS)})")
    if cfg.corrector != "none" and cfg.method not in ("euler_maruyama", "reverse_diffusion"):
        raise FitmError(
            f"sampling.corrector={cfg.corrector!r} needs sampling.method euler_maruyama or reverse_diffusion, "
            f"not {cfg.method!r}"
        )
    if cfg.method != "ode" and (not isinstance(cfg.steps, int) or cfg.steps < 2):
        raise FitmError(f"sampling.steps={cfg.steps!r} must be an integer >= 2")
    if cfg.method == "dpm_solver" and cfg.order not in DPM_ORDERS:
        raise FitmError(f"sampling.order={cfg.order!r}: dpm_solver is of order 2 or 3")
    if not 0 < cfg.eps < 1:
        raise FitmError(f"sampling.eps={cfg.eps!r} must lie in (0, 1)")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise FitmError(f"sampling.batch_size={cfg.batch_size!r} must be a positive integer")


def nfe(cfg) -> dict:
    """Network evaluations per sample: predictor, corrector and the final denoising step, so that sampler
    comparisons count the same thing. The ODE solver is adaptive: its predictor count is not known in advance."""
    check_sampling_config(cfg)
    predictor = None if cfg.method == "ode" else cfg.steps
    corrector = cfg.steps * cfg.corrector_steps if cfg.corrector != "none" else 0
    denoise = int(bool(cfg.denoise))
    total = None if predictor is None else predictor + corrector + denoise
    return {"predictor": predictor, "corrector": corrector, "denoise": denoise, "total": total}


def sample(
    fn: ScoreFn,
    sde: VPSDE,
    shape: tuple[int, ...],
    cfg,
    generator: torch.Generator | int = 0,
    device: torch.device | str = "cpu",
    predicts: str = "eps",
    progress=None,
) -> torch.Tensor:
    """Draw `shape` samples with `fn(x, t)`, an epsilon model (predicts='eps') or a score function
    (predicts='score'); `generator` is a torch.Generator on `device` or an int seed; `progress` wraps the
    step loop in a bar (Runtime.progress)."""
    check_sampling_config(cfg)
    device = torch.device(device)
    if predicts == "eps":
        eps_fn = fn
    elif predicts == "score":
        eps_fn = eps_from_score(fn, sde)
    else:
        raise ValueError(f"predicts must be 'eps' or 'score', got {predicts!r}")
    if cfg.clip_denoised:
        eps_fn = _clip_denoised(eps_fn, sde)
    score_fn = score_from_eps(eps_fn, sde)
    if isinstance(generator, int):
        generator = torch.Generator(device).manual_seed(generator)
    with torch.inference_mode():
        x = sde.prior_sampling(shape, generator, device)
        bar = progress or _silent
        if cfg.method == "ddim":
            x = _ddim(eps_fn, sde, x, cfg, bar)
        elif cfg.method == "dpm_solver":
            x = _dpm_solver(eps_fn, sde, x, cfg, bar)
        elif cfg.method == "ode":
            x = _ode(score_fn, sde, x, cfg, bar)
        else:
            x = _predictor_corrector(score_fn, sde, x, cfg, generator, bar)
        if cfg.denoise:
            x = _tweedie(score_fn, sde, x, cfg.eps)
    return x


def _clip_denoised(eps_fn: ScoreFn, sde: VPSDE) -> ScoreFn:
    """eps_fn whose implied denoised image (x - s eps) / a is clipped to [-1, 1]."""

    def clipped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = (_bc(v, x) for v in sde.marginal_coeffs(t))
        x0 = ((x - s * eps_fn(x, t)) / a).clamp_(-1, 1)
        return (x - a * x0) / s

    return clipped


def _silent(iterable=None, **kwargs):
    return tqdm(iterable, disable=True, **kwargs)


def _tweedie(score_fn: ScoreFn, sde: VPSDE, x: torch.Tensor, t: float) -> torch.Tensor:
    tt = torch.full((x.shape[0],), t, device=x.device)
    a, s = sde.marginal_coeffs(tt)
    return (x + _bc(s, x) ** 2 * score_fn(x, tt)) / _bc(a, x)


def _predictor_corrector(score_fn, sde: VPSDE, x, cfg, generator, progress) -> torch.Tensor:
    chain = VPSDE(sde.beta_min, sde.beta_max, cfg.steps)
    rsde = chain.reverse(score_fn)
    ts = torch.linspace(sde.T, cfg.eps, cfg.steps + 1, device=x.device)
    batch = x.shape[0]
    for i in progress(range(cfg.steps), desc=cfg.method):
        t = ts[i].expand(batch)
        if cfg.corrector == "langevin":
            for _ in range(cfg.corrector_steps):
                x = _langevin(score_fn, chain, x, t, cfg.snr, generator)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        if cfg.method == "euler_maruyama":
            dt = ts[i + 1] - ts[i]
            drift, diffusion = rsde.sde(x, t)
            x = x + drift * dt + diffusion * (-dt).sqrt() * noise
        else:
            f, g = rsde.discretize(x, t)
            x = x - f + g * noise
    return x


def _langevin(score_fn, chain: VPSDE, x, t, snr, generator) -> torch.Tensor:
    """One Langevin step whose size sets the batch-mean ratio |score step| / |noise| to `snr` (Song et al.)."""
    grad = score_fn(x, t)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    grad_norm = grad.flatten(1).norm(dim=1).mean()
    noise_norm = noise.flatten(1).norm(dim=1).mean()
    step = _bc((snr * noise_norm / grad_norm) ** 2 * 2 * (1 - chain.discrete_beta(t)), x)
    return x + step * grad + (2 * step).sqrt() * noise


def _ddim(eps_fn, sde: VPSDE, x, cfg, progress) -> torch.Tensor:
    ts = torch.linspace(sde.T, cfg.eps, cfg.steps + 1, device=x.device)
    a, s = sde.marginal_coeffs(ts)
    batch = x.shape[0]
    for i in progress(range(cfg.steps), desc="ddim"):
        eps = eps_fn(x, ts[i].expand(batch))
        x0 = (x - s[i] * eps) / a[i]
        x = a[i + 1] * x0 + s[i + 1] * eps
    return x


def _dpm_solver(eps_fn, sde: VPSDE, x, cfg, progress) -> torch.Tensor:
    """x_{i+1} = (s_{i+1} / s_i) x_i - a_{i+1} (e^{-h} - 1) D, h = lambda_{i+1} - lambda_i, where D is the
    newest denoised estimate corrected by its change over the last steps (DPM-Solver++ 2M / 3M)."""
    lam_ends = sde.half_log_snr(torch.tensor([sde.T, cfg.eps], dtype=torch.float64))
    lam = torch.linspace(float(lam_ends[0]), float(lam_ends[1]), cfg.steps + 1, dtype=torch.float64).tolist()
    times = sde.time_of(torch.tensor(lam, dtype=torch.float64))
    a, s = (v.tolist() for v in sde.marginal_coeffs(times))
    ts = times.to(device=x.device, dtype=torch.float32)
    batch, denoised = x.shape[0], []  # the latest estimates of x_0, newest first
    for i in progress(range(cfg.steps), desc="dpm_solver"):
        eps = eps_fn(x, ts[i].expand(batch))
        denoised = [(x - s[i] * eps) / a[i]] + denoised[: cfg.order - 1]
        final = cfg.steps - i if cfg.steps < LOWER_ORDER_FINAL_BELOW else cfg.order
        order = min(cfg.order, len(denoised), final)
        h = lam[i + 1] - lam[i]
        phi1 = math.expm1(-h)
        x = s[i + 1] / s[i] * x - a[i + 1] * phi1 * _multistep_estimate(denoised[:order], lam[: i + 1], h, phi1)
    return x


def _multistep_estimate(denoised: list[torch.Tensor], lam: list[float], h: float, phi1: float) -> torch.Tensor:
    """D of the DPM-Solver++ update from the newest 1-3 estimates of x_0 (newest first) at the half log-SNRs
    `lam` (ending at the newest): the estimate itself, plus its first and second divided differences."""
    m0 = denoised[0]
    if len(denoised) == 1:
        return m0
    r0 = (lam[-1] - lam[-2]) / h
    d1_0 = (m0 - denoised[1]) / r0
    if len(denoised) == 2:
        return m0 + 0.5 * d1_0
    r1 = (lam[-2] - lam[-3]) / h
    d1_1 = (denoised[1] - denoised[2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    return m0 - phi2 / phi1 * d1 + phi3 / phi1 * d2


def _ode(score_fn, sde: VPSDE, x, cfg, progress) -> torch.Tensor:
    """All images form one ODE system, as in the reference; every evaluation crosses host and device once."""
    rsde = sde.reverse(score_fn, probability_flow=True)
    shape, device, batch = x.shape, x.device, x.shape[0]
    bar = progress(desc="ode", unit="nfe")

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).to(device=device, dtype=torch.float32).reshape(shape)
        drift, _ = rsde.sde(xt, torch.full((batch,), t, device=device))
        bar.update()
        return drift.reshape(-1).double().cpu().numpy()

    try:
        y0 = x.reshape(-1).double().cpu().numpy()
        sol = solve_ivp(rhs, (sde.T, cfg.eps), y0, method="RK45", rtol=cfg.ode_tol, atol=cfg.ode_tol)
    finally:
        bar.close()
    if not sol.success:
        raise FitmError(f"sampling.method=ode: the solver failed ({sol.message}); try a larger sampling.ode_tol")
    return torch.from_numpy(sol.y[:, -1]).to(device=device, dtype=torch.float32).reshape(shape)
