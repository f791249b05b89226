"""Tests of vae_utils.elbo: likelihoods, KL, ELBO and IWAE against closed forms and exact evidences."""

from __future__ import annotations

import math

import pytest
import torch

from vae_utils import elbo as E

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_within_standard_errors(samples: torch.Tensor, expected: torch.Tensor, n_se: float = 5.0) -> None:
    """The mean of ``samples`` over dim 0 is within ``n_se`` standard errors of ``expected``."""
    se = samples.std(dim=0) / math.sqrt(len(samples))
    assert ((samples.mean(dim=0) - expected).abs() <= n_se * se).all(), (samples.mean(dim=0), expected, se)


# ------------------------------------------------------------------------------------------- KL, sampling


def test_gaussian_kl_matches_monte_carlo():
    mu = torch.tensor([[0.0, 0.0, 0.0], [1.5, -0.5, 2.0], [-1.0, 0.3, 0.0]], dtype=F64)
    logvar = torch.tensor([[0.0, 0.0, 0.0], [-2.0, 0.5, 1.0], [0.7, -0.1, -3.0]], dtype=F64)
    n = 200_000
    mu_n, logvar_n = mu.repeat(n, 1), logvar.repeat(n, 1)
    z = E.reparameterize(mu_n, logvar_n, gen(0))
    log_q_minus_log_p = E.gaussian_log_density(z, mu_n, logvar_n) - E.standard_normal_log_density(z)
    kl = E.gaussian_kl(mu, logvar)
    assert kl[0] == 0 and (kl[1:] > 0).all()
    assert_within_standard_errors(log_q_minus_log_p.view(n, 3), kl)


def test_gaussian_log_density_matches_torch_distributions():
    g = gen(1)
    z, mu, logvar = (torch.randn(4, 3, generator=g, dtype=F64) for _ in range(3))
    expected = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(E.gaussian_log_density(z, mu, logvar), expected)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(E.standard_normal_log_density(z), standard)


def test_reparameterize_is_reproducible_and_differentiable():
    mu = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    z = E.reparameterize(mu, logvar, gen(0))
    torch.testing.assert_close(z, E.reparameterize(mu, logvar, gen(0)))
    (z**2).sum().backward()
    assert (mu.grad != 0).all() and (logvar.grad != 0).all()


# ------------------------------------------------- probabilistic PCA: an exact evidence and an exact posterior


class PPCA:
    """z ~ N(0, I_2), x | z ~ N(Wz + b, s^2 I_5) with orthogonal columns of W, so the posterior is diagonal."""

    def __init__(self, seed: int = 0) -> None:
        g = gen(seed)
        q, _ = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=F64))
        self.W = q * torch.tensor([2.0, 0.7], dtype=F64)
        self.b = torch.randn(5, generator=g, dtype=F64)
        self.s2 = 0.25
        self.x = self.W @ torch.randn(2, generator=g, dtype=F64) + self.b + 0.5 * torch.randn(5, generator=g, dtype=F64)

    def log_evidence(self) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s2 * torch.eye(5, dtype=F64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(self.x)

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of p(z | x), each (1, 2)."""
        var = 1 / (1 + (self.W**2).sum(0) / self.s2)  # W^T W is diagonal
        return (var * (self.W.T @ (self.x - self.b)) / self.s2)[None], var.log()[None]

    def log_likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) for z: (..., 2)."""
        return E.gaussian_log_density(self.x, z @ self.W.T + self.b, torch.full((5,), math.log(self.s2), dtype=F64))

    def analytic_elbo(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """E_q[log p(x | z)] in closed form minus gaussian_kl, for q = N(mu, diag(exp(logvar))), each (B, 2)."""
        residual = ((self.x - mu @ self.W.T - self.b) ** 2).sum(-1) + (logvar.exp() * (self.W**2).sum(0)).sum(-1)
        expected_log_lik = -2.5 * math.log(2 * math.pi * self.s2) - residual / (2 * self.s2)
        return expected_log_lik - E.gaussian_kl(mu, logvar)


def diagonal_gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def test_elbo_equals_log_evidence_at_the_true_posterior():
    ppca = PPCA()
    mu, logvar = ppca.posterior()
    torch.testing.assert_close(ppca.analytic_elbo(mu, logvar), ppca.log_evidence()[None], rtol=0, atol=1e-10)
    # Every importance weight p(x, z) / q(z | x) is exactly p(x): the Monte-Carlo ELBO has zero variance.
    z = E.reparameterize(mu.expand(1000, 2), logvar.expand(1000, 2), gen(0))
    log_w = ppca.log_likelihood(z) + E.standard_normal_log_density(z) - E.gaussian_log_density(z, mu, logvar)
    torch.testing.assert_close(log_w, ppca.log_evidence().expand(1000), rtol=0, atol=1e-9)


def test_elbo_gap_is_kl_to_the_true_posterior():
    ppca = PPCA()
    g = gen(1)
    mu_q, logvar_q = torch.randn(50, 2, generator=g, dtype=F64), torch.randn(50, 2, generator=g, dtype=F64)
    gap = ppca.log_evidence() - ppca.analytic_elbo(mu_q, logvar_q)
    torch.testing.assert_close(gap, diagonal_gaussian_kl(mu_q, logvar_q, *ppca.posterior()), rtol=1e-9, atol=1e-9)
    assert (gap > 0).all()


def test_monte_carlo_elbo_matches_the_analytic_one():
    ppca = PPCA()
    mu, logvar = torch.tensor([[0.3, -1.0]], dtype=F64), torch.tensor([[-1.0, 0.5]], dtype=F64)
    z = E.reparameterize(mu.expand(100_000, 2), logvar.expand(100_000, 2), gen(2))
    elbo_samples = ppca.log_likelihood(z) - E.gaussian_kl(mu, logvar)
    assert_within_standard_errors(elbo_samples, ppca.analytic_elbo(mu, logvar)[0])


# ------------------------------------ a tiny Bernoulli VAE whose evidence is computed by quadrature over z


class TinyVAE:
    """1-D latent, 2x2 binary images: logits = w z + b; an imperfect Gaussian encoder of variance ``q_var``
    (0.1 is too narrow: a clear gap that shrinks slowly with k). Duck-types the VAEs."""

    likelihood = "bernoulli"

    def __init__(self, q_var: float = 0.1) -> None:
        self.q_var = q_var
        self.w = torch.tensor([2.0, -1.5, 1.0, 3.0], dtype=F64)
        self.b = torch.tensor([0.5, 0.0, -1.0, 0.2], dtype=F64)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)
        mu = 0.6 * (flat[:, 0] + flat[:, 3] - flat[:, 1]) - 0.4
        return mu[:, None], torch.full_like(mu[:, None], math.log(self.q_var))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z * self.w + self.b).view(-1, 1, 2, 2)

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log of the integral of p(z) p(x | z) over z, by a fine Riemann sum on [-12, 12]."""
        z = torch.linspace(-12, 12, 48_001, dtype=F64)[:, None]
        dz = 24 / 48_000
        log_joint = E.standard_normal_log_density(z)[:, None] + torch.stack(
            [E.bernoulli_log_likelihood(self.decode(z), xi.expand(len(z), 1, 2, 2)) for xi in x], dim=1
        )
        return torch.logsumexp(log_joint, dim=0) + math.log(dz)


X_TINY = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=F64).view(3, 1, 2, 2)


def test_elbo_dict_and_bound_on_tiny_vae():
    model, n = TinyVAE(), 20_000
    out = E.elbo(model, X_TINY.repeat(n, 1, 1, 1), beta=0.5, generator=gen(0))
    assert set(out) == {"elbo", "distortion", "rate", "loss"} and all(v.shape == (3 * n,) for v in out.values())
    torch.testing.assert_close(out["elbo"], -(out["distortion"] + out["rate"]))
    torch.testing.assert_close(out["loss"], out["distortion"] + 0.5 * out["rate"])
    assert (out["distortion"] >= 0).all() and (out["rate"] >= 0).all()
    log_px = model.log_evidence(X_TINY)
    elbo = out["elbo"].view(n, 3)
    se = elbo.std(0) / math.sqrt(n)
    assert (elbo.mean(0) < log_px - 5 * se).all()  # this encoder is imperfect: a clear gap


def test_iwae_bounds_log_evidence_and_grows_with_k():
    model, n = TinyVAE(), 4000
    log_px = model.log_evidence(X_TINY)
    means, ses = {}, {}
    for k in (1, 5, 50):
        bound = E.iwae_bound(model, X_TINY.repeat(n, 1, 1, 1), k, generator=gen(k)).view(n, 3)
        means[k], ses[k] = bound.mean(0), bound.std(0) / math.sqrt(n)
        assert (means[k] <= log_px + 5 * ses[k]).all()
    assert (means[5] - means[1] > 5 * (ses[1] ** 2 + ses[5] ** 2).sqrt()).all()
    assert (means[50] - means[5] > 5 * (ses[5] ** 2 + ses[50] ** 2).sqrt()).all()
    wider = TinyVAE(q_var=0.3)  # with a closer q the bound reaches log p(x) at a feasible k
    torch.testing.assert_close(E.iwae_bound(wider, X_TINY, 20_000, gen(0), chunk_size=5000), log_px, rtol=0, atol=0.02)


def test_iwae_with_one_sample_is_the_elbo_in_expectation():
    model, n = TinyVAE(), 20_000
    x = X_TINY.repeat(n, 1, 1, 1)
    iwae = E.iwae_bound(model, x, 1, generator=gen(0)).view(n, 3)
    elbo = E.elbo(model, x, generator=gen(1))["elbo"].view(n, 3)
    se = (iwae.var(0) / n + elbo.var(0) / n).sqrt()
    assert ((iwae.mean(0) - elbo.mean(0)).abs() < 5 * se).all()


def test_iwae_does_not_depend_on_chunk_size():
    model = TinyVAE()
    bounds = [E.iwae_bound(model, X_TINY, 37, gen(3), chunk_size=c) for c in (1, 5, 37, 100)]
    for bound in bounds[1:]:
        torch.testing.assert_close(bound, bounds[0], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------ Bernoulli


def test_bernoulli_log_likelihood_matches_the_formula_and_is_stable():
    g = gen(0)
    logits = 3 * torch.randn(2, 1, 28, 28, generator=g, dtype=F64)
    x = torch.bernoulli(torch.full_like(logits, 0.4), generator=g)
    p = torch.sigmoid(logits)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(E.bernoulli_log_likelihood(logits, x), expected)
    confident_and_wrong = torch.full((1, 1, 28, 28), 100.0)
    log_lik = E.bernoulli_log_likelihood(confident_and_wrong, torch.zeros(1, 1, 28, 28))
    torch.testing.assert_close(log_lik, torch.tensor([-784 * 100.0]))


def test_bernoulli_mean_and_sample():
    logits = torch.tensor([-50.0, 0.0, 50.0]).view(1, 1, 1, 3).expand(4000, 1, 1, 3)
    torch.testing.assert_close(E.likelihood_mean("bernoulli", logits)[0].flatten(), torch.tensor([0.0, 0.5, 1.0]))
    x = E.likelihood_sample("bernoulli", logits, gen(0))
    assert ((x == 0) | (x == 1)).all()
    assert (x[..., 0] == 0).all() and (x[..., 2] == 1).all() and abs(x[..., 1].mean().item() - 0.5) < 0.04


# ------------------------------------------------------------------------------- discretized logistic mixture


def random_mixture_params(k: int = 3, dtype=torch.float32) -> torch.Tensor:
    """(2, 3k, 8, 8): every pixel a different (mean, log-scale) pair, from far outside [-1, 1] and tiny scales
    (clamped at -7) to huge ones; random mixture logits."""
    means = torch.tensor([-5.0, -1.0, -0.3, 0.0, 0.5, 1.0, 5.0, 0.99])
    log_scales = torch.tensor([-20.0, -7.0, -3.0, 0.0, 3.0, 7.0, 20.0, 60.0])
    m, s = torch.meshgrid(means, log_scales, indexing="ij")
    g = gen(0)
    logits = 3 * torch.randn(2, k, 8, 8, generator=g)
    jitter = 0.1 * torch.randn(2, k, 8, 8, generator=g)
    return torch.cat([logits, m + jitter, s + jitter], dim=1).to(dtype)


def naive_log_probs_float64(params: torch.Tensor) -> torch.Tensor:
    """The textbook formula, CDF(upper edge) - CDF(lower edge), in float64: a reference where it does not underflow."""
    logits, means, log_scales = params.double().unsqueeze(-1).chunk(3, dim=1)
    levels = torch.arange(256, dtype=F64)
    cdf = lambda y: torch.sigmoid((y - means) / log_scales.clamp(min=-7).exp())
    upper = torch.where(levels == 255, 1.0, cdf(2 * levels / 255 - 1 + 1 / 255))
    lower = torch.where(levels == 0, 0.0, cdf(2 * levels / 255 - 1 - 1 / 255))
    return torch.logsumexp(logits.log_softmax(dim=1) + (upper - lower).log(), dim=1, keepdim=True)


def test_mixture_pmf_sums_to_one_everywhere():
    for dtype, tol in ((torch.float32, 1e-4), (F64, 1e-10)):
        log_probs = E.discretized_logistic_mixture_log_probs(random_mixture_params(dtype=dtype))
        assert log_probs.shape == (2, 1, 8, 8, 256) and torch.isfinite(log_probs).all()
        assert log_probs.logsumexp(dim=-1).abs().max() < tol


def test_mixture_probs_for_coding_match_the_log_probs():
    params = random_mixture_params()
    probs = E.discretized_logistic_mixture_probs(params)
    assert probs.dtype == F64 and probs.shape == (2, 1, 8, 8, 256) and (probs >= 0).all()
    assert (probs.sum(dim=-1) - 1).abs().max() < 1e-12
    exact = E.discretized_logistic_mixture_log_probs(params.double()).exp()
    assert (probs - exact).abs().max() < 1e-12


def test_mixture_log_probs_are_accurate_in_float32():
    params = random_mixture_params()
    reference = naive_log_probs_float64(params)
    ok = reference > -30  # where the float64 difference of CDFs is itself trustworthy
    assert ok.float().mean() > 0.3
    assert (E.discretized_logistic_mixture_log_probs(params).double() - reference)[ok].abs().max() < 1e-3


def test_mixture_log_likelihood_is_the_gathered_log_prob():
    params = random_mixture_params()
    k = torch.randint(0, 256, (2, 1, 8, 8), generator=gen(1))
    k[0, 0, 0, :2] = torch.tensor([0, 255])  # include both edge levels
    log_probs = E.discretized_logistic_mixture_log_probs(params)
    expected = log_probs.gather(-1, k.unsqueeze(-1)).sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(E.log_likelihood("logistic_mixture", params, k / 255), expected)


def test_mixture_edge_bins_take_the_tails():
    # One component, mean mu, log-scale 0 (scale 1 on [-1, 1]): P(0) = sigmoid(-1 + 1/255 - mu), P(255) likewise.
    mu = torch.tensor([-3.0, 0.0, 3.0])
    params = torch.stack([torch.zeros(3), mu, torch.zeros(3)]).view(1, 3, 1, 3)
    probs = E.discretized_logistic_mixture_log_probs(params).exp()[0, 0, 0]
    torch.testing.assert_close(probs[:, 0], torch.sigmoid(-1 + 1 / 255 - mu))
    torch.testing.assert_close(probs[:, 255], torch.sigmoid(mu - 1 + 1 / 255))
    # A sharp component far below black (or above white) puts all its mass on level 0 (or 255): log P = 0.
    sharp = torch.stack([torch.zeros(2), torch.tensor([-3.0, 3.0]), torch.full((2,), -7.0)]).view(1, 3, 1, 2)
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert E.discretized_logistic_mixture_log_likelihood(sharp, x).abs().item() < 1e-6


def test_mixture_gradients_are_finite_at_extreme_params():
    params = random_mixture_params().requires_grad_(True)
    E.discretized_logistic_mixture_log_probs(params).sum().backward()
    assert torch.isfinite(params.grad).all()


def test_mixture_mean_is_the_pmf_mean():
    params = random_mixture_params()
    from_pmf = (E.discretized_logistic_mixture_log_probs(params).exp() * torch.arange(256) / 255).sum(-1)
    mean = E.likelihood_mean("logistic_mixture", params)
    assert mean.shape == (2, 1, 8, 8) and (mean >= 0).all() and (mean <= 1).all()
    torch.testing.assert_close(mean, from_pmf, rtol=0, atol=1e-4)


def test_mixture_sample_follows_the_pmf():
    # Two components on one pixel: a sharp one at grey level 40 and a broad one that spills into both tails.
    one = torch.tensor([0.0, 0.5, 2 * 40 / 255 - 1, 0.2, -7.0, -0.5]).view(1, 6, 1, 1)
    n = 40_000
    x = E.likelihood_sample("logistic_mixture", one.expand(n, 6, 1, 1), gen(0)).flatten()
    assert (x >= 0).all() and (x <= 1).all() and ((x * 255 - (x * 255).round()).abs() < 1e-4).all()
    pmf = E.discretized_logistic_mixture_log_probs(one).exp().flatten()
    for level in (0, 40, 255):
        hits = (x * 255).round() == level
        assert_within_standard_errors(hits.double(), pmf[level].double())
    assert_within_standard_errors(x.double(), E.discretized_logistic_mixture_mean(one).double().flatten())


# ----------------------------------------------------------------------------------------------------- units


def test_nats_bits_per_dim():
    assert E.nats_to_bits_per_dim(784 * math.log(2)) == pytest.approx(1.0)
    assert E.nats_to_bits_per_dim(10 * math.log(2), dims=10) == pytest.approx(1.0)
    assert E.bits_per_dim_to_nats(E.nats_to_bits_per_dim(87.3)) == pytest.approx(87.3)
    nats = torch.tensor([80.0, 100.0])
    torch.testing.assert_close(E.bits_per_dim_to_nats(E.nats_to_bits_per_dim(nats, dims=3072), dims=3072), nats)


@pytest.mark.parametrize("dims", [0, -784, 2.5, True, "784"])
def test_bad_dims(dims):
    with pytest.raises(ValueError, match="dims must be a positive int"):
        E.nats_to_bits_per_dim(1.0, dims=dims)
    with pytest.raises(ValueError, match="dims must be a positive int"):
        E.bits_per_dim_to_nats(1.0, dims=dims)


# ------------------------------------------------------------------------------------------------ bad inputs


def test_bad_inputs_raise_clear_errors():
    logits, x = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"binary x .*binarize_stochastic"):
        E.bernoulli_log_likelihood(logits, torch.full((2, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match=r"logits and x must have the same shape, got \(2, 1, 4, 3\) and \(2, 1"):
        E.bernoulli_log_likelihood(torch.zeros(2, 1, 4, 3), x)
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\].*to_tensor"):
        E.bernoulli_log_likelihood(logits, 255 * x)
    with pytest.raises(TypeError, match="x must be a float tensor .* got torch.uint8"):
        E.bernoulli_log_likelihood(logits, x.to(torch.uint8))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\).* got \(4, 4\)"):
        E.bernoulli_log_likelihood(logits, x[0, 0])
    with pytest.raises(ValueError, match="8-bit x = k/255"):
        E.discretized_logistic_mixture_log_likelihood(torch.zeros(2, 6, 4, 4), torch.full((2, 1, 4, 4), 0.3))
    with pytest.raises(ValueError, match="params must have 3K channels"):
        E.discretized_logistic_mixture_log_likelihood(torch.zeros(2, 5, 4, 4), x)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\) matching params"):
        E.discretized_logistic_mixture_log_likelihood(torch.zeros(2, 6, 4, 4), torch.ones(2, 1, 5, 4))
    for call in (
        lambda: E.log_likelihood("gaussian", logits, x),
        lambda: E.likelihood_mean("gaussian", logits),
        lambda: E.likelihood_sample("gaussian", logits),
    ):
        with pytest.raises(ValueError, match="unknown likelihood 'gaussian'; choose one of bernoulli, logistic_mix"):
            call()
    with pytest.raises(ValueError, match="mu and logvar must have the same shape"):
        E.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"mu must have shape \(B, D\)"):
        E.reparameterize(torch.zeros(3), torch.zeros(3))
    with pytest.raises(TypeError, match="model must have encode, decode and likelihood"):
        E.elbo(object(), x)
    with pytest.raises(ValueError, match="beta must be a non-negative number"):
        E.elbo(TinyVAE(), X_TINY, beta=-1.0)
    with pytest.raises(ValueError, match="k must be a positive int"):
        E.iwae_bound(TinyVAE(), X_TINY, 0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        E.iwae_bound(TinyVAE(), X_TINY, 5, chunk_size=0)


def test_value_checks_can_be_turned_off_for_a_block():
    """The trainer turns off the checks that read values (each one waits for the device); shapes still count."""
    from vae_utils.model import ConvVAE

    grey = torch.full((2, 1, 28, 28), 0.5)
    with pytest.raises(ValueError, match="needs binary x"):
        E.bernoulli_log_likelihood(torch.zeros_like(grey), grey)
    with E.value_checks(False):
        assert not E.checking_values()
        assert E.bernoulli_log_likelihood(torch.zeros_like(grey), grey).shape == (2,)
        ConvVAE(latent_dim=2, channels=(2, 2), hidden_dim=4).encode(grey * 3)  # out of [0, 1]: not read
        with pytest.raises(ValueError, match="same shape"):
            E.bernoulli_log_likelihood(torch.zeros(2, 1, 28, 27), grey)
    assert E.checking_values()
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ConvVAE(latent_dim=2, channels=(2, 2), hidden_dim=4).encode(grey * 3)

# ------------------------------------------------------------- learned priors and latent hierarchies (Chapter 8)


class TinyMixturePriorVAE(TinyVAE):
    """The tiny VAE with a learned prior: a two-component Gaussian mixture in place of N(0, 1)."""

    prior = "mog"

    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_weights = torch.tensor([0.3, 0.7], dtype=F64).log()
        return log_weights, torch.tensor([[-1.0], [0.8]], dtype=F64), torch.tensor([[-1.0], [-0.5]], dtype=F64)

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.linspace(-12, 12, 48_001, dtype=F64)[:, None]
        log_joint = E.mixture_log_density(z, *self.prior_components())[:, None] + torch.stack(
            [E.bernoulli_log_likelihood(self.decode(z), xi.expand(len(z), 1, 2, 2)) for xi in x], dim=1
        )
        return torch.logsumexp(log_joint, dim=0) + math.log(24 / 48_000)


class TinyHierarchy(TinyVAE):
    """The tiny VAE with a second latent layer whose marginal prior on z_1 is still N(0, 1): p(z_2) = N(0, 1),
    p(z_1 | z_2) = N(0.8 z_2, 0.36); and q(z_2 | z_1) = N(0.8 z_1, 0.36), the exact posterior p(z_2 | z_1). So
    its log p(x) is the tiny VAE's, and so is its ELBO in expectation."""

    latent_dims = (1, 1)

    def posterior(self, level: int, given: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if level == 0:
            return self.encode(given)
        return 0.8 * given, torch.full_like(given, math.log(0.36))

    def conditional_prior(self, level: int, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.8 * z_above, torch.full_like(z_above, math.log(0.36))

    def parameters(self):
        yield self.w


def test_mixture_log_density_matches_torch_distributions():
    log_weights, mu, logvar = TinyMixturePriorVAE().prior_components()
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=log_weights),
        torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * logvar).exp()), 1),
    )
    z = torch.linspace(-5, 5, 101, dtype=F64).view(-1, 1)
    torch.testing.assert_close(E.mixture_log_density(z, log_weights, mu, logvar), mixture.log_prob(z))
    with pytest.raises(ValueError, match="a mixture of K Gaussians in D dimensions"):
        E.mixture_log_density(z, log_weights, mu, logvar[:1])


def test_learned_prior_rate_and_bounds_against_the_exact_evidence():
    model, n = TinyMixturePriorVAE(q_var=0.3), 20_000
    x = X_TINY.repeat(n, 1, 1, 1)
    out = E.elbo(model, x, generator=gen(0))
    torch.testing.assert_close(out["elbo"], -(out["distortion"] + out["rate"]))
    mu, logvar = model.encode(X_TINY)
    z = mu.T + torch.linspace(-8, 8, 16_001, dtype=F64)[:, None] * (0.5 * logvar.T).exp()  # quadrature over q
    log_q = -0.5 * (math.log(2 * math.pi) + logvar.T + (z - mu.T) ** 2 / logvar.T.exp())
    log_p = E.mixture_log_density(z[..., None], *model.prior_components())
    kl = ((log_q - log_p) * log_q.exp()).sum(0) * (16 / 16_000) * (0.5 * logvar.T).exp()[0]
    assert_within_standard_errors(out["rate"].view(n, 3), kl)  # the one-sample rate is unbiased
    log_px = model.log_evidence(X_TINY)
    assert (out["elbo"].view(n, 3).mean(0) < log_px).all()
    torch.testing.assert_close(E.iwae_bound(model, X_TINY, 20_000, gen(1), chunk_size=5000), log_px, rtol=0, atol=0.02)


def test_hierarchical_elbo_and_iwae_of_a_hierarchy_with_an_exact_upper_posterior():
    model, flat, n = TinyHierarchy(q_var=0.3), TinyVAE(q_var=0.3), 20_000
    x = X_TINY.repeat(n, 1, 1, 1)
    out = E.elbo(model, x, generator=gen(0))
    assert out["layer_rates"].shape == (3 * n, 2)
    torch.testing.assert_close(out["rate"], out["layer_rates"].sum(dim=1))
    torch.testing.assert_close(out["elbo"], -(out["distortion"] + out["rate"]))
    hierarchical, single = out["elbo"].view(n, 3), E.elbo(flat, x, generator=gen(1))["elbo"].view(n, 3)
    se = (hierarchical.var(0) / n + single.var(0) / n).sqrt()
    assert ((hierarchical.mean(0) - single.mean(0)).abs() < 5 * se).all()  # KL(q(z2|z1) || p(z2|z1)) = 0
    log_px = flat.log_evidence(X_TINY)
    torch.testing.assert_close(E.iwae_bound(model, X_TINY, 20_000, gen(2), chunk_size=5000), log_px, rtol=0, atol=0.02)
    chunks = [E.iwae_bound(model, X_TINY, 37, gen(3), chunk_size=c) for c in (1, 5, 37)]
    for bound in chunks[1:]:
        torch.testing.assert_close(bound, chunks[0], rtol=0, atol=1e-12)


def test_free_bits_and_per_layer_beta_change_the_loss_not_the_elbo():
    model, x = TinyHierarchy(), X_TINY.repeat(200, 1, 1, 1)
    plain = E.elbo(model, x, generator=gen(0))
    rates = plain["layer_rates"].mean(0)
    threshold = float(rates.max()) + 1.0  # above both layers' mean rates: both are charged the constant
    free = E.elbo(model, x, generator=gen(0), free_bits=threshold)
    torch.testing.assert_close(free["elbo"], plain["elbo"])
    torch.testing.assert_close(free["loss"], plain["distortion"] + 2 * threshold)
    low = E.elbo(model, x, generator=gen(0), free_bits=float(rates.min()) / 2)  # below both: the plain loss
    torch.testing.assert_close(low["loss"], plain["loss"])
    weighted = E.elbo(model, x, beta=[1.0, 0.0], generator=gen(0))
    torch.testing.assert_close(weighted["loss"], plain["distortion"] + plain["layer_rates"][:, 0])
    for bad, match in (({"beta": [1.0]}, "one per latent layer"), ({"beta": -1.0}, "non-negative"),
                       ({"free_bits": -1.0}, "free_bits must be"), ({"free_bits": math.inf}, "free_bits must be")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            E.elbo(model, x, **bad)
