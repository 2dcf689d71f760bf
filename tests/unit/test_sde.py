"""VP-SDE, denoising score matching and the samplers, checked against a Gaussian whose score is known exactly."""

import math

import pytest
import torch
from ml_collections import ConfigDict
from scipy.integrate import quad

from fitm.errors import FitmError
from fitm.sde import VPSDE, dsm_draws, dsm_loss, eps_from_score, sample, score_from_eps

MU = torch.tensor([0.5, -0.3])
SIGMA = torch.tensor([[0.3, 0.1], [0.1, 0.2]])
N_SAMPLES = 4000



def gaussian_score(sde, mu=MU, sigma=SIGMA):
    """Exact score of p_t when x_0 ~ N(mu, sigma): x_t ~ N(a mu, a^2 sigma + s^2 I); x shaped (B, 2, 1, 1)."""
    lam, u = torch.linalg.eigh(sigma)

    def score(x, t):
        a, s = sde.marginal_coeffs(t)
        d = (x.reshape(-1, 2) - a[:, None] * mu) @ u
        return (-(d / (a[:, None] ** 2 * lam + s[:, None] ** 2)) @ u.T).reshape(x.shape)

    return score


def sampling_cfg(**kw):
    base = dict(method="ddim", corrector="none", snr=0.16, corrector_steps=1, steps=100, eps=1e-3, denoise=True,
                batch_size=1000, ode_tol=1e-5, clip_denoised=False, order=2)
    return ConfigDict(dict(base, **kw))


def test_marginal_matches_closed_form_integral():
    sde = VPSDE(0.1, 20.0, 1000)
    t = torch.tensor([1e-5, 0.01, 0.3, 0.7, 1.0], dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.full((5, 1, 1, 1), 2.0, dtype=torch.float64), t)
    for i, ti in enumerate(t.tolist()):
        integral = quad(lambda s: 0.1 + s * (20.0 - 0.1), 0, ti)[0]
        a = math.exp(-0.5 * integral)
        assert mean[i].item() == pytest.approx(2.0 * a, rel=1e-9)
        assert std[i].item() == pytest.approx(math.sqrt(1 - a * a), rel=1e-6)


def test_marginal_matches_monte_carlo_forward_sde():
    """Euler-Maruyama on dx = f dt + g dw from N(1.5, 0.5^2) lands on the closed-form marginal at t = 0.2, 0.6."""
    sde = VPSDE()
    gen = torch.Generator().manual_seed(0)
    x = 1.5 + 0.5 * torch.randn(20000, 1, 1, 1, generator=gen, dtype=torch.float64)  # standard error 0.004
    dt = 2e-3
    for i in range(300):
        t = torch.full((x.shape[0],), i * dt, dtype=torch.float64)
        drift, diffusion = sde.sde(x, t)
        x = x + drift * dt + diffusion * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if i + 1 in (100, 300):
            a, s = (v.item() for v in sde.marginal_coeffs(torch.tensor([(i + 1) * dt], dtype=torch.float64)))
            assert x.mean().item() == pytest.approx(1.5 * a, abs=0.02)
            assert x.std().item() == pytest.approx(math.sqrt(0.25 * a * a + s * s), abs=0.02)


def test_discretize_is_the_ddpm_chain():
    sde = VPSDE(0.1, 20.0, 1000)
    betas = torch.linspace(0.1 / 1000, 20.0 / 1000, 1000, dtype=torch.float64)
    idx = torch.tensor([0, 1, 500, 999])
    t = (idx.double() + 0.5) / 999
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    f, g = sde.discretize(x, t)
    assert torch.allclose(g.flatten(), betas[idx].sqrt())
    assert torch.allclose(f, ((1 - betas[idx]).sqrt() - 1)[:, None, None, None] * x)
    # the whole chain shrinks the data as the continuous SDE does by t = 1, up to O(beta^2) terms (3%)
    a1 = sde.marginal_coeffs(torch.tensor([1.0], dtype=torch.float64))[0].item()
    assert (1 - betas).prod().sqrt().item() == pytest.approx(a1, rel=0.05)


def test_reverse_sde_and_probability_flow():
    sde = VPSDE()
    x, t = torch.randn(3, 2, 1, 1), torch.tensor([0.2, 0.5, 0.9])
    score = gaussian_score(sde)
    f, g = sde.sde(x, t)
    rf, rg = sde.reverse(score).sde(x, t)
    pf, pg = sde.reverse(score, probability_flow=True).sde(x, t)
    assert torch.allclose(rf, f - g**2 * score(x, t)) and torch.equal(rg, g)
    assert torch.allclose(pf, f - 0.5 * g**2 * score(x, t)) and not pg.any()
    df, dg = sde.discretize(x, t)
    rdf, rdg = sde.reverse(score).discretize(x, t)
    assert torch.allclose(rdf, df - dg**2 * score(x, t)) and torch.equal(rdg, dg)


def test_eps_and_score_convert_both_ways():
    sde = VPSDE()
    x, t = torch.randn(4, 2, 1, 1), torch.rand(4) * 0.9 + 0.05
    score = gaussian_score(sde)
    assert torch.allclose(score_from_eps(eps_from_score(score, sde), sde)(x, t), score(x, t), atol=1e-5)


def test_dsm_loss_is_lowest_for_the_true_score():
    sde = VPSDE()
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.randn(8000, 2, generator=gen) @ torch.linalg.cholesky(SIGMA).T + MU).reshape(-1, 2, 1, 1)
    true = eps_from_score(gaussian_score(sde), sde)
    shifted = eps_from_score(gaussian_score(sde, mu=MU + 0.3), sde)
    scaled = eps_from_score(gaussian_score(sde, sigma=SIGMA * 2), sde)
    t, z = dsm_draws(len(x0), x0.shape[1:], torch.Generator().manual_seed(1), "cpu", 1e-5)
    losses = [dsm_loss(fn, sde, x0, t, z).item() for fn in (true, shifted, scaled)]
    assert losses[0] < losses[1] and losses[0] < losses[2]
    assert losses[0] < 1.0  # eps prediction from a clean-enough score beats the trivial 0 prediction (loss 1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="euler_maruyama", steps=200),
        dict(method="reverse_diffusion", steps=200),
        dict(method="euler_maruyama", corrector="langevin", steps=100),
        dict(method="reverse_diffusion", corrector="langevin", steps=100),
        dict(method="ode"),
        dict(method="ddim", steps=200),
        dict(method="dpm_solver", steps=20),
        dict(method="dpm_solver", steps=10, order=2),
    ],
    ids=lambda kw: "-".join(str(v) for v in kw.values()),
)
def test_samplers_reproduce_a_gaussian(kw):
    sde = VPSDE()
    x = sample(gaussian_score(sde), sde, (N_SAMPLES, 2, 1, 1), sampling_cfg(**kw), 0, "cpu", predicts="score")
    x = x.reshape(-1, 2)
    assert x.shape == (N_SAMPLES, 2)
    assert torch.allclose(x.mean(0), MU, atol=0.03), x.mean(0)
    assert torch.allclose(torch.cov(x.T), SIGMA, atol=0.03), torch.cov(x.T)


def exact_flow(sde, x_prior, t_end, mu=MU, sigma=SIGMA):
    """The probability-flow ODE of N(mu, sigma) data solved exactly from t = 1 to t_end: a linear map that takes
    each marginal N(a mu, a^2 sigma + s^2 I) to the next along sigma's eigenvectors."""
    lam, u = torch.linalg.eigh(sigma)
    (a1, s1), (a0, s0) = (sde.marginal_coeffs(torch.tensor([t])) for t in (sde.T, t_end))
    scale = ((a0**2 * lam + s0**2) / (a1**2 * lam + s1**2)).sqrt()
    d = (x_prior.reshape(-1, 2) - a1 * mu) @ u
    return a0 * mu + (d * scale) @ u.T


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_beats_ddim_at_few_steps(steps, order):
    """At 10-20 network evaluations the multistep solver's samples are nearer the true marginal at t = eps than
    DDIM's from the same prior draws: their mean, their covariance, and each sample's end point (the exact flow
    of those draws, whose mean and covariance are the marginal's up to the draws' own sampling error)."""
    sde, n, t_end = VPSDE(), 20000, 1e-3
    prior = sde.prior_sampling((n, 2, 1, 1), torch.Generator().manual_seed(0))
    target = exact_flow(sde, prior, t_end)
    errors = {}
    for method in ("ddim", "dpm_solver"):
        cfg = sampling_cfg(method=method, steps=steps, denoise=False, order=order)
        x = sample(gaussian_score(sde), sde, (n, 2, 1, 1), cfg, 0, predicts="score").reshape(-1, 2)
        errors[method] = ((x.mean(0) - target.mean(0)).norm().item(), (torch.cov(x.T) - torch.cov(target.T)).norm().item(),
                          (x - target).norm(dim=1).mean().item())
    margin = 0.25 if order == 2 else 1.0  # order 3 extrapolates over the wide first steps of a 10-step grid
    for ddim_error, dpm_error in zip(errors["ddim"], errors["dpm_solver"]):
        assert dpm_error < margin * ddim_error, errors


@pytest.mark.parametrize("method", ["euler_maruyama", "reverse_diffusion", "ddim", "dpm_solver"])
def test_clip_denoised_keeps_samples_in_the_data_range(method):
    """A model whose denoised estimate lies far outside [-1, 1] (here: data centred at 3) drives unclipped
    samples out of range; clipped, every step's estimate and so the samples stay within it."""
    sde = VPSDE()
    far = gaussian_score(sde, mu=torch.tensor([3.0, -3.0]), sigma=torch.eye(2) * 0.01)
    off = sample(far, sde, (256, 2, 1, 1), sampling_cfg(method=method, steps=50), 0, predicts="score")
    on = sample(far, sde, (256, 2, 1, 1), sampling_cfg(method=method, steps=50, clip_denoised=True), 0,
                predicts="score")
    assert off.abs().mean() > 2.5
    assert on.abs().max() <= 1.0 + 1e-4 and on.abs().mean() > 0.9  # pinned at the edge of the range


def test_sampling_is_seeded_and_takes_eps_models():
    sde = VPSDE()
    eps_fn = eps_from_score(gaussian_score(sde), sde)
    cfg = sampling_cfg(method="euler_maruyama", steps=20)
    a = sample(eps_fn, sde, (16, 2, 1, 1), cfg, 3)
    assert torch.equal(a, sample(eps_fn, sde, (16, 2, 1, 1), cfg, 3))
    assert not torch.equal(a, sample(eps_fn, sde, (16, 2, 1, 1), cfg, 4))
    assert torch.allclose(a, sample(gaussian_score(sde), sde, (16, 2, 1, 1), cfg, 3, predicts="score"), atol=1e-4)


@pytest.mark.parametrize(
    "kw, option",
    [
        (dict(method="heun"), "sampling.method"),
        (dict(corrector="ald"), "sampling.corrector"),
        (dict(method="ddim", corrector="langevin"), "sampling.corrector"),
        (dict(steps=1), "sampling.steps"),
        (dict(eps=0.0), "sampling.eps"),
        (dict(method="dpm_solver", order=4), "sampling.order"),
    ],
)
def test_bad_sampling_config_is_refused(kw, option):
    sde = VPSDE()
    with pytest.raises(FitmError, match=option):
        sample(gaussian_score(sde), sde, (4, 2, 1, 1), sampling_cfg(**kw), 0, predicts="score")


@pytest.mark.parametrize("kw, counts", [
    (dict(method="euler_maruyama", steps=50, corrector="none", denoise=True), (50, 0, 1, 51)),
    (dict(method="reverse_diffusion", steps=100, corrector="langevin", corrector_steps=2, denoise=True),
     (100, 200, 1, 301)),
    (dict(method="ddim", steps=20, corrector="none", denoise=False), (20, 0, 0, 20)),
    (dict(method="ode", corrector="none", denoise=True), (None, 0, 1, None)),
])
def test_nfe_counts_predictor_corrector_and_denoise(kw, counts):
    from fitm.configs.default import get_config
    from fitm.sde.sampling import nfe

    cfg = get_config().sampling
    cfg.update(kw)
    assert tuple(nfe(cfg).values()) == counts
    calls = []
    counted = lambda x, t: calls.append(1) or torch.zeros_like(x)
    sample(counted, VPSDE(), (2, 1, 2, 2), cfg, 0)
    if counts[-1] is not None:
        assert len(calls) == counts[-1]
