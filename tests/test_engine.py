"""The engine against closed forms: products of Gaussians, a Gaussian posterior, a mixture product."""
import logging
import math

import pytest
import torch

import poegen
from poegen.experts.analytic import (Gaussian, GaussianLikelihood, GaussianMixture, HalfSpace, LinearPotential,
                                     gaussian_posterior, gaussian_product, mixture_product)
from poegen.samplers import kernels

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def weighted_moments(x, log_w):
    w = torch.softmax(log_w.double(), 0)
    mu = (w[:, None] * x).sum(0)
    d = x - mu
    return mu, (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0), float(1 / (w ** 2).sum())


def errors_in_se(x, log_w, mean, cov):
    """Largest |error| of the weighted mean and covariance, in Monte Carlo standard errors (Kish ESS)."""
    mu, C, ess = weighted_moments(x, log_w)
    v = torch.diag(cov)
    se_mean = (v / ess).sqrt()
    se_cov = ((v[:, None] * v[None, :] + cov ** 2) / ess).sqrt()
    return float(((mu - mean).abs() / se_mean).max()), float(((C - cov).abs() / se_cov).max())


def random_gaussian(d, seed, jitter):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    return torch.randn(d, generator=g, dtype=F64), A @ A.T / d + jitter * torch.eye(d, dtype=F64)


@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("sampler", ["poe", "ais"])
def test_product_of_two_gaussians_is_exact(d, sampler):
    (m1, C1), (m2, C2) = random_gaussian(d, 1, 0.5), random_gaussian(d, 2, 0.3)
    mean, cov, log_Z = gaussian_product(m1, C1, m2, C2)
    product = poegen.Product([Gaussian(m1, C1), Gaussian(m2, C2)])
    r = poegen.sample(product, sampler=sampler, num_particles=2000, num_steps=50, generator=gen(), dtype=F64,
                      kernel="mala", step_scale=0.3, mcmc_steps=2)  # 2 moves: 1 gave a covariance 4.7 SE off
    acc = [a for a in r.diagnostics["acceptance"] if not math.isnan(a)]
    assert 0.5 < sum(acc) / len(acc) < 1.0  # MALA is on and actually rejects
    err_mean, err_cov = errors_in_se(r.x, r.log_w, mean, cov)
    assert err_mean < 4 and err_cov < 4
    assert abs(r.log_Z - float(log_Z)) < 0.1


def test_ancestral_is_biased_on_a_product():
    (m1, C1), (m2, C2) = random_gaussian(2, 1, 0.5), random_gaussian(2, 2, 0.05)
    mean, cov, _ = gaussian_product(m1, C1, m2, C2)
    r = poegen.sample(poegen.Product([Gaussian(m1, C1), Gaussian(m2, C2)]), sampler="ancestral",
                      num_particles=2000, num_steps=50, generator=gen(), dtype=F64)
    assert max(errors_in_se(r.x, r.log_w, mean, cov)) > 8


def _posterior_problem():
    m = torch.tensor([0.0, 1.0], dtype=F64)
    C = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    y, R = torch.tensor([1.5, -0.5], dtype=F64), 0.4 * torch.eye(2, dtype=F64)
    return poegen.Product([Gaussian(m, C)], potentials=[GaussianLikelihood(y, R)]), gaussian_posterior(m, C, y, R)


@pytest.mark.parametrize("sampler", ["smc", "poe"])
def test_gaussian_posterior(sampler):
    product, (mean, cov, log_Z) = _posterior_problem()
    r = poegen.sample(product, sampler=sampler, num_particles=2000, num_steps=50, generator=gen(), dtype=F64)
    assert max(errors_in_se(r.x, r.log_w, mean, cov)) < 4
    assert abs(r.log_Z - float(log_Z)) < 0.15


def test_ancestral_ignores_the_likelihood():
    product, (mean, cov, _) = _posterior_problem()
    r = poegen.sample(product, sampler="ancestral", num_particles=2000, num_steps=50, generator=gen(), dtype=F64)
    assert errors_in_se(r.x, r.log_w, mean, cov)[0] > 20


def _mixtures():
    eye = torch.eye(2, dtype=F64)
    p = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], torch.stack([0.25 * eye, 0.25 * eye]))
    q = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], torch.stack([0.09 * eye, 1.0 * eye]))
    return p, q


@pytest.mark.parametrize("sampler,ok", [("poe", True), ("ancestral", False)])
def test_mixture_product_mode_weights(sampler, ok):
    p, q = _mixtures()
    exact, _ = mixture_product(p, q)
    left_exact = float(exact.weights[exact.means[:, 0] < 0].sum())
    assert abs(left_exact - 0.786) < 0.01  # unequal modes: the narrow left pair overlaps more
    r = poegen.sample(poegen.Product([p, q]), sampler=sampler, num_particles=2000, num_steps=50,
                      generator=gen(), dtype=F64)
    left = float(torch.softmax(r.log_w.double(), 0)[r.x[:, 0] < 0].sum())
    assert (abs(left - left_exact) < 0.05) == ok, left


def test_best_of_n_keeps_the_highest_reward():
    prior = Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    reward = LinearPotential([1.0, 0.0])
    r = poegen.sample(poegen.Product([prior], potentials=[reward]), sampler="best-of-n", num_particles=64,
                      num_steps=10, generator=gen(), dtype=F64)
    assert r.x.shape == (1, 2)
    assert float(r.x[0, 0]) == pytest.approx(float(r.particles.x[:, 0].max()))


def test_best_ranks_live_particles_by_final_reward_after_resampling():
    # poe resamples at every level here (threshold 1), so all final weights are equal: "best" must still
    # return the particle with the highest reward, as the weight alone would pick an arbitrary one
    prior = Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    product = poegen.Product([prior], potentials=[LinearPotential([1.0, 0.0])])
    r = poegen.sample(product, sampler="poe", num_particles=32, num_steps=8, generator=gen(), dtype=F64,
                      ess_threshold=1.0, select="best")
    assert bool((r.particles.log_w == r.particles.log_w[0]).all())
    assert float(r.x[0, 0]) == pytest.approx(float(r.particles.x[:, 0].max()))
    # a dead particle is never chosen, whatever its reward
    from poegen.samplers.engine import _select
    p = r.particles
    dead = p.replace(log_w=torch.where(p.x[:, 0] == p.x[:, 0].max(), -math.inf, p.log_w))
    x, _ = _select(dead, "best", None)
    assert float(x[0, 0]) == pytest.approx(float(p.x[:, 0].sort().values[-2]))


def test_hard_constraint_posterior():
    # N(0, 1) restricted to x0 >= 0.5: the mean is the truncated-normal mean phi(a) / (1 - Phi(a))
    prior = Gaussian(torch.zeros(1, dtype=F64), torch.eye(1, dtype=F64))
    # a hard constraint at an intermediate level prunes whole paths (a bias), so it acts at the last level only
    product = poegen.Product([prior], potentials=[HalfSpace([1.0], -0.5)], schedule=lambda t: float(t >= 1.0))
    r = poegen.sample(product, sampler="poe", num_particles=2000, num_steps=50, generator=gen(), dtype=F64)
    a = torch.tensor(0.5, dtype=F64)
    phi, Phi = torch.exp(-a ** 2 / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    mu, _, ess = weighted_moments(r.x, r.log_w)
    assert (r.x[torch.isfinite(r.log_w), 0] >= 0.5 - 1e-3).all()
    assert abs(float(mu[0]) - float(phi / (1 - Phi))) < 4 * 0.6 / math.sqrt(ess)
    assert abs(r.log_Z - math.log(1 - float(Phi))) < 0.1


def test_mala_leaves_a_gaussian_invariant():
    mean, cov = torch.tensor([1.0, -1.0], dtype=F64), torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=F64)
    target = Gaussian(mean, cov)
    product = poegen.Product([target])
    sigma, B = torch.tensor(0.3, dtype=F64), torch.ones(1, 2, dtype=F64)
    evaluate = lambda z: product.evaluate(z, sigma, B, density=True)  # noqa: E731
    g = gen(5)
    stationary = Gaussian(mean, cov + sigma ** 2 * torch.eye(2, dtype=F64))
    x = mean + torch.randn(4000, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(stationary.cov).T
    x_start, ev, rates = x.clone(), evaluate(x), []
    for _ in range(20):
        x, ev, acc = kernels.langevin_move(x, ev, evaluate, torch.tensor(1.5, dtype=F64), True, g)
        rates.append(float(acc.double().mean()))
    assert 0.2 < sum(rates) / len(rates) < 0.95
    assert (x != x_start).any(1).double().mean() > 0.9  # it moved
    assert max(errors_in_se(x, torch.zeros(4000, dtype=F64), stationary.mean, stationary.cov)) < 4


def test_same_seed_same_result_and_nfe_counts():
    (m1, C1), (m2, C2) = random_gaussian(2, 1, 0.5), random_gaussian(2, 2, 0.3)
    make = lambda: poegen.Product([Gaussian(m1, C1, name="a"), Gaussian(m2, C2, name="b")])  # noqa: E731
    r1 = poegen.sample(make(), num_particles=50, num_steps=7, generator=gen(3))
    r2 = poegen.sample(make(), num_particles=50, num_steps=7, generator=gen(3))
    r3 = poegen.sample(make(), num_particles=50, num_steps=7, generator=gen(4))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.log_w, r2.log_w) and r1.log_Z == r2.log_Z
    assert not torch.equal(r1.x, r3.x)
    # level 0, then per level: a Jacobian re-evaluation (exact Euler), the proposal and 2 MCMC moves
    assert r1.nfe == {"a": 50 * (1 + 7 * 3), "b": 50 * (1 + 7 * 3)}
    shared = make()
    for _ in range(2):  # counts are per run, not cumulative on the product
        r4 = poegen.sample(shared, sampler="smc", proposal="stochastic", num_particles=50, num_steps=7, generator=gen(3))
        assert r4.nfe["a"] == 50 * (1 + 7)


def test_masks_combine_denoisers_per_region():
    a = Gaussian(torch.zeros(4, dtype=F64), torch.eye(4, dtype=F64))
    b = Gaussian(torch.full((4,), 3.0, dtype=F64), 0.5 * torch.eye(4, dtype=F64))
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    product = poegen.Product([a, b], masks=[mask, 1 - mask])
    x, sigma = torch.randn(5, 4, dtype=F64), torch.tensor(0.7, dtype=F64)
    B = product.total_weight((4,), "cpu", F64)
    ev = product.evaluate(x, sigma, B)
    expected = torch.where(mask.bool(), a.denoise(x, sigma), b.denoise(x, sigma))
    assert torch.allclose(ev.x0, expected)
    assert not product.has_density  # a masked product has no normalised density


def test_mask_shapes_are_checked_against_the_sample_shape():
    """A mask must broadcast to the experts' sample shape (C, H, W): size 1 or equal in each trailing dim."""
    from poegen.experts.shapes import load_prior
    prior = load_prior().null()  # sample shape (3, 32, 32)
    for ok in [(1, 32, 32), (32, 32), (3, 1, 32), (1,)]:
        poegen.Product([prior, prior], masks=[torch.ones(ok), torch.ones(ok)])
    for bad in [(16, 16), (2, 32, 32), (3, 32, 31)]:
        with pytest.raises(ValueError, match=rf"mask of expert .* has shape \({bad[0]}, .*not broadcastable"):
            poegen.Product([prior, prior], masks=[torch.ones(bad), None])


def test_lambda_schedules():
    from poegen.product import lambda_schedule
    assert lambda_schedule("constant")(0.0) == 1.0
    assert lambda_schedule("linear")(0.25) == 0.25
    exp = lambda_schedule("exponential")
    assert exp(0.0) == 0.0 and exp(1.0) == pytest.approx(1.0) and exp(0.5) < 0.5
    with pytest.raises(ValueError, match="constant, linear, exponential"):
        lambda_schedule("cubic")


def test_particles_take_keeps_aux_aligned():
    p = poegen.Particles(torch.arange(4.0)[:, None], torch.zeros(4), aux={"f": torch.arange(4.0) * 10})
    q = p.take(torch.tensor([3, 3, 0, 1]))
    assert q.x[:, 0].tolist() == [3, 3, 0, 1] and q.aux["f"].tolist() == [30, 30, 0, 10]


# ---- errors ---------------------------------------------------------------------------------------

def _simple():
    return poegen.Product([Gaussian(torch.zeros(2), torch.eye(2), name="prior")])


def test_unknown_sampler_and_scheme_and_option_list_the_names():
    with pytest.raises(ValueError, match="ancestral, best-of-n, smc, ais, poe"):
        poegen.sample(_simple(), sampler="nope")
    with pytest.raises(ValueError, match="multinomial"):
        poegen.sample(_simple(), resample="nope")
    with pytest.raises(ValueError, match="mcmc_steps"):
        poegen.sample(_simple(), mcmc_stepz=3)
    assert poegen.samplers.available() == ["ancestral", "best-of-n", "smc", "ais", "poe"]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="num_particles"):
        poegen.sample(_simple(), num_particles=0)
    with pytest.raises(ValueError, match="num_steps"):
        poegen.sample(_simple(), num_steps=0)


def test_experts_with_disagreeing_shapes_are_named():
    with pytest.raises(ValueError, match=r"small \(2,\).*big \(3,\)"):
        poegen.Product([Gaussian(torch.zeros(2), torch.eye(2), name="small"),
                        Gaussian(torch.zeros(3), torch.eye(3), name="big")])


class NaNOnSome:
    """Returns NaN for particles whose first coordinate is above a threshold."""
    name = "flaky"
    shape = (2,)

    def __init__(self, threshold):
        self.inner, self.threshold = Gaussian(torch.zeros(2), torch.eye(2)), threshold

    def denoise(self, x, sigma):
        out = self.inner.denoise(x, sigma)
        return torch.where(x[:, :1] > self.threshold, float("nan"), out)


def test_nan_kills_only_affected_particles_and_is_logged(caplog):
    product = poegen.Product([NaNOnSome(threshold=150.0)])  # only particles far out at sigma_max hit it
    with caplog.at_level(logging.WARNING, logger="poegen.engine"):
        r = poegen.sample(product, sampler="ais", num_particles=400, num_steps=5, generator=gen(), sigma_max=100.0)
    dead = ~torch.isfinite(r.log_w)
    assert 0 < int(dead.sum()) < 400
    assert torch.isfinite(r.x[~dead]).all()
    assert "flaky" in caplog.text and "NaN" in caplog.text


def test_all_dead_names_the_expert():
    product = poegen.Product([Gaussian(torch.zeros(2), torch.eye(2))],
                             potentials=[HalfSpace([1.0, 0.0], -1e6, name="impossible")])
    with pytest.raises(poegen.AllParticlesDead, match="impossible"):
        poegen.sample(product, num_particles=16, num_steps=3, generator=gen())
    with pytest.raises(poegen.AllParticlesDead, match="flaky"):
        poegen.sample(poegen.Product([NaNOnSome(threshold=-math.inf)]), num_particles=8, num_steps=3, generator=gen())


def test_gradient_guidance_keeps_the_target_and_lifts_the_ess():
    # the twisted proposal follows the likelihood's gradient; its ratio in the weights keeps the target
    # (with exact=False the target is the DDPM chain's law times the potential, as for neural experts)
    product, (mean, cov, log_Z) = _posterior_problem()
    runs = {gg: poegen.sample(product, sampler="smc", num_particles=2000, num_steps=50, generator=gen(), dtype=F64,
                              proposal="stochastic", exact=False, grad_guidance=gg, ess_threshold=0.3)
            for gg in (0.0, 1.0)}
    (mu0, _, ess0), (mu1, _, ess1) = (weighted_moments(r.x, r.log_w) for r in runs.values())
    se = (torch.diag(cov) * (1 / ess0 + 1 / ess1)).sqrt()
    assert float(((mu1 - mu0).abs() / se).max()) < 4  # the same target
    assert abs(runs[1.0].log_Z - runs[0.0].log_Z) < 0.1
    mean_ess = {gg: sum(r.diagnostics["ess"]) / len(r.diagnostics["ess"]) for gg, r in runs.items()}
    assert mean_ess[1.0] > 1.15 * mean_ess[0.0]
    assert sum(runs[1.0].diagnostics["resampled"]) < sum(runs[0.0].diagnostics["resampled"])


def test_gradient_guidance_needs_differentiable_potentials():
    class Opaque:
        def log_potential(self, x0):
            return torch.zeros(x0.shape[0], dtype=x0.dtype)

    product = poegen.Product([Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))], potentials=[Opaque()])
    with pytest.raises(ValueError, match="grad_guidance needs potentials and denoisers"):
        poegen.sample(product, sampler="smc", num_particles=4, num_steps=2, dtype=F64, proposal="stochastic",
                      grad_guidance=1.0)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_reward_every_k_levels_keeps_the_posterior(k):
    product, (mean, cov, log_Z) = _posterior_problem()
    r = poegen.sample(product, sampler="smc", num_particles=2000, num_steps=50, generator=gen(), dtype=F64,
                      reward_every=k)
    assert max(errors_in_se(r.x, r.log_w, mean, cov)) < 4
    assert abs(r.log_Z - float(log_Z)) < 0.15
    scored = len([level for level in range(1, 51) if level % k == 0 or level == 50])
    assert r.nfe[product.potential_names[0]] == 2000 * (1 + scored)  # level 0, then every k-th level and the last


def test_reward_every_is_checked():
    product, _ = _posterior_problem()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="reward_every"):
            poegen.sample(product, num_particles=4, num_steps=2, reward_every=bad)


class _CountingDenoiser:
    """A neural-like expert (no density): x0_hat = x / (1 + sigma^2), counting its calls."""

    name, shape = "counted", (3,)

    def __init__(self):
        self.calls = 0

    def denoise(self, x, sigma):
        self.calls += 1
        return x / (1 + sigma ** 2)


@pytest.mark.parametrize("sampler,per_level", [("ancestral", 1), ("best-of-n", 1), ("smc", 1), ("ais", 2), ("poe", 2)])
def test_denoiser_calls_per_level_do_no_work_twice(sampler, per_level):
    expert = _CountingDenoiser()
    product = poegen.Product([expert], potentials=[LinearPotential(torch.ones(3))])
    poegen.sample(product, sampler=sampler, num_particles=8, num_steps=5, generator=gen())
    # level 0, then the proposal's evaluation (reused by the weights and the next proposal) and one per MCMC move
    assert expert.calls == 1 + 5 * per_level


def test_a_potentials_nan_is_a_warning_and_its_minus_inf_only_info(caplog):
    class Bad:
        name = "bad"

        def __init__(self, value):
            self.value = value

        def log_potential(self, x0):
            out = torch.zeros(x0.shape[0], dtype=x0.dtype)
            out[0] = self.value
            return out

    for value, level in ((math.nan, logging.WARNING), (-math.inf, logging.INFO)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="poegen.engine"):
            poegen.sample(poegen.Product([Gaussian(torch.zeros(2), torch.eye(2))], potentials=[Bad(value)]),
                          sampler="smc", num_particles=8, num_steps=2, generator=gen())
        records = [r for r in caplog.records if "potential bad" in r.getMessage()]
        assert records and records[0].levelno == level


def test_ancestral_marks_a_nan_particle_dead_and_best_never_returns_it():
    class Nan:
        name, shape = "nanny", (2,)

        def denoise(self, x, sigma):
            out = x / (1 + sigma ** 2)
            out[0] = math.nan
            return out

    product = poegen.Product([Nan()])
    r = poegen.sample(product, sampler="ancestral", num_particles=4, num_steps=3, generator=gen())
    assert r.log_w[0] == -math.inf and torch.isfinite(r.log_w[1:]).all()  # marked, as the weighted samplers do
    best = poegen.sample(product, sampler="ancestral", num_particles=4, num_steps=3, generator=gen(), select="best")
    assert torch.isfinite(best.x).all()


@pytest.mark.parametrize("sampler", ["smc", "poe"])
def test_tempering_keeps_the_posterior(sampler):
    product, (mean, cov, log_Z) = _posterior_problem()
    r = poegen.sample(product, sampler=sampler, num_particles=2000, num_steps=50, generator=gen(), dtype=F64,
                      tempering=0.3)
    assert max(errors_in_se(r.x, r.log_w, mean, cov)) < 4
    assert abs(r.log_Z - float(log_Z)) < 0.15


def test_tempering_holds_the_ess_on_a_sharp_likelihood():
    # a likelihood 1000 times sharper than the prior: untempered, the increments collapse the weights to one particle
    m, C = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    y, R = torch.tensor([2.0, -1.0], dtype=F64), 0.001 * torch.eye(2, dtype=F64)
    product = poegen.Product([Gaussian(m, C)], potentials=[GaussianLikelihood(y, R)], schedule="linear")
    runs = {t: poegen.sample(product, sampler="smc", num_particles=256, num_steps=30, generator=gen(), dtype=F64,
                             tempering=t) for t in (0.0, 0.3)}
    low = {t: min(r.diagnostics["ess"][:-1]) for t, r in runs.items()}
    assert low[0.0] < 2 and low[0.3] >= 0.3 * 256 * 0.999
    final = runs[0.3].particles  # the last level's potentials are at full strength: the target is unchanged
    assert torch.allclose(final.aux["f"], product.log_potentials(final.x, 1.0)[0])


def test_tempered_takes_the_largest_fraction_that_keeps_the_ess():
    from poegen.resampling import ess
    from poegen.samplers.engine import tempered

    log_w = torch.zeros(64, dtype=F64)
    delta = 10 * torch.randn(64, generator=gen(3), dtype=F64)
    step = tempered(log_w, delta, 32.0)
    tau = float((step / delta).mean())
    assert torch.allclose(step, tau * delta) and 0 < tau < 1
    assert float(ess(log_w + step)) >= 32 * 0.999 and float(ess(log_w + (tau + 1 / 32) * delta)) < 32
    assert torch.equal(tempered(log_w, torch.zeros(64, dtype=F64), 32.0), torch.zeros(64, dtype=F64))
    assert torch.equal(tempered(log_w, torch.ones(64, dtype=F64), 32.0), torch.ones(64, dtype=F64))  # ESS unchanged
    skewed = torch.cat([torch.zeros(1, dtype=F64), torch.full((63,), -3.0, dtype=F64)])  # ESS 14.8 < 32 already:
    boost = torch.zeros(64, dtype=F64)
    boost[0] = 5.0
    assert torch.equal(tempered(skewed, boost, 32.0), torch.zeros(64, dtype=F64))  # no lower
    assert torch.equal(tempered(skewed, -boost, 32.0), -boost)  # a step that lifts the ESS is taken whole
    hard = delta.clone()
    hard[5] = -math.inf  # a hard constraint's -inf is never softened
    assert tempered(log_w, hard, 32.0)[5] == -math.inf


def test_resample_start_waits_and_keeps_the_posterior():
    # at ess_threshold 0.9 the run resamples within the first 40% of the levels; with resample_start=0.4 it waits
    product, (mean, cov, log_Z) = _posterior_problem()
    runs = {start: poegen.sample(product, sampler="poe", num_particles=2000, num_steps=50, generator=gen(), dtype=F64,
                                 ess_threshold=0.9, resample_start=start) for start in (0.0, 0.4)}
    assert any(runs[0.0].diagnostics["resampled"][:20])
    resampled = runs[0.4].diagnostics["resampled"]
    assert not any(resampled[:20]) and any(resampled[20:])
    r = runs[0.4]
    assert max(errors_in_se(r.x, r.log_w, mean, cov)) < 4
    assert abs(r.log_Z - float(log_Z)) < 0.15
    with pytest.raises(ValueError, match="resample_start"):
        poegen.sample(product, num_particles=4, num_steps=2, resample_start=1.5)


def test_poe_resamples_from_the_start_only_with_exact_weights():
    # poe's resample_start="auto": 0 where the weights are exact (densities), RESAMPLE_START where a potential judges
    # a denoiser's x0_hat; ess_threshold=1 resamples wherever allowed
    from poegen.samplers.engine import RESAMPLE_START

    exact, _ = _posterior_problem()
    neural = poegen.Product([_CountingDenoiser()], potentials=[LinearPotential(torch.ones(3))])
    flags = {name: poegen.sample(p, sampler="poe", num_particles=8, num_steps=10, generator=gen(),
                                 ess_threshold=1.0).diagnostics["resampled"] for name, p in (("exact", exact),
                                                                                               ("neural", neural))}
    assert all(flags["exact"])
    assert flags["neural"] == [level > RESAMPLE_START * 10 for level in range(1, 11)]


def test_a_started_run_denoises_its_start_as_the_closed_form_says():
    """Product.start = (x_s, s): the run begins at x_s + s * eps and keeps only the levels at or below s. Under a
    Gaussian prior N(m, c) the reverse diffusion from there ends at p(x0 | x_s) averaged over eps: mean
    m + k (x_s - m) and variance c s^2 / (c + s^2) + k^2 s^2 with k = c / (c + s^2). (The ancestral sampler's own
    discretisation shrinks variances: from noise, 0.41 for 0.5 at 60 levels, 0.48 at 200.)"""
    m, c, s = torch.tensor([1.0, -2.0], dtype=F64), 0.5, 0.8
    x_s = torch.tensor([3.0, 0.0], dtype=F64)
    product = poegen.Product([Gaussian(m, c * torch.eye(2, dtype=F64))])
    product.start = (x_s, s)
    run = dict(sampler="ancestral", num_particles=4000, num_steps=200, dtype=F64, select="all")
    r = poegen.sample(product, generator=gen(), **run)
    k = c / (c + s ** 2)
    want_mean, want_var = m + k * (x_s - m), c * s ** 2 / (c + s ** 2) + k ** 2 * s ** 2
    assert torch.allclose(r.x.mean(0), want_mean, atol=4 * (want_var / 4000) ** 0.5)
    assert torch.allclose(r.x.var(0), torch.full((2,), want_var, dtype=F64), rtol=0.06)
    product.start = None
    far = poegen.sample(product, generator=gen(), **run)
    assert torch.allclose(far.x.mean(0), m, atol=0.06)  # from noise: the prior itself, not the start
    assert r.nfe[product.names[0]] < 0.5 * far.nfe[product.names[0]]  # the levels above s were skipped
