"""Likelihoods, the Gaussian KL, the ELBO and the IWAE bound; nats <-> bits per dimension (Chapter 3).

Every quantity is **per example**, a tensor of shape ``(B,)`` in nats; average it yourself. The likelihoods are
pure tensor functions; :func:`elbo` and :func:`iwae_bound` take any model with ``encode(x) -> (mu, logvar)``,
``decode(z) -> params`` and a ``likelihood`` name from :data:`LIKELIHOODS`.

Two likelihoods for images ``x: (B, 1, H, W)`` in [0, 1]:

- ``"bernoulli"``: binarized images (every pixel exactly 0. or 1.); ``params`` are logits ``(B, 1, H, W)``.
- ``"logistic_mixture"``: 8-bit images (pixel ``k/255``, k in 0..255); ``params: (B, 3K, H, W)`` are the
  mixture logits, means and log-scales of a discretized logistic mixture with K components (PixelCNN++).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "logistic_mixture")
MIN_LOG_SCALE = -7.0
"""Log-scales are clamped from below (as in PixelCNN++): a scale of exp(-7) on [-1, 1] already puts all but
about 1e-3 of a component's mass in one grey level."""


# ---------------------------------------------------------------------------------------------------- checks

_value_checks = True  # see value_checks()


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Turn the input checks that read tensor *values* (x in [0, 1], binary, on the 8-bit grid) on or off
    inside a ``with`` block; shape and type checks always run.

    Reading a value makes the host wait for the device and splits a ``torch.compile`` graph, once per check.
    The trainer turns these checks off around its steps, whose batches are binary or 8-bit by construction.
    """
    global _value_checks
    previous, _value_checks = _value_checks, bool(enabled)
    try:
        yield
    finally:
        _value_checks = previous


def checking_values() -> bool:
    """Whether the value checks are on (they are, outside :func:`value_checks`)."""
    return _value_checks


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_float_tensor(name: str, t: object, ndim: int | None, shape_text: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        seen = f"{t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a float tensor of shape {shape_text}, got {seen}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_text}, got {tuple(t.shape)}")
    return t


def _check_images(x: object) -> torch.Tensor:
    x = _check_float_tensor("x", x, 4, "(B, 1, H, W) with values in [0, 1]")
    if _value_checks and not ((x >= 0) & (x <= 1)).all():
        raise ValueError(
            f"x must hold values in [0, 1], got min {x.min().item():.4g} and max {x.max().item():.4g}; "
            "convert uint8 images with vae_utils.data.to_tensor"
        )
    return x


def _check_binary(x: object) -> torch.Tensor:
    x = _check_images(x)
    if not _value_checks:
        return x
    non_binary = x[(x != 0) & (x != 1)]
    if non_binary.numel():
        raise ValueError(
            f"the bernoulli likelihood needs binary x (every pixel 0. or 1.), but x holds {non_binary.numel()} "
            f"other values, e.g. {non_binary[0].item():.6g}. Binarize the images first "
            "(vae_utils.data.binarize_stochastic or binarize_threshold, then to_tensor(..., max_value=1)) "
            "or use the 'logistic_mixture' likelihood for 8-bit images"
        )
    return x


def _check_8bit(x: object) -> torch.Tensor:
    """x in [0, 1] as k/255 -> the grey levels k, a long tensor of the same shape."""
    x = _check_images(x)
    levels = x * 255
    off_grid = (levels - levels.round()).abs() > 1e-4 if _value_checks else None
    if off_grid is not None and off_grid.any():
        raise ValueError(
            f"the logistic_mixture likelihood needs 8-bit x = k/255 (k an integer 0..255), but {int(off_grid.sum())} "
            f"values of x are not, e.g. {x[off_grid][0].item():.6g}; make x with vae_utils.data.to_tensor(images) "
            "from uint8 grey levels"
        )
    return levels.round().long()


# --------------------------------------------------------------------------------------------- Bernoulli


def _check_logits(logits: object, x: torch.Tensor) -> torch.Tensor:
    logits = _check_float_tensor("logits", logits, 4, "(B, C, H, W)")
    if logits.shape != x.shape:
        raise ValueError(f"logits and x must have the same shape, got {tuple(logits.shape)} and {tuple(x.shape)}")
    return logits


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) in nats, ``(B,)``, for binary ``x: (B, C, H, W)`` and ``logits`` of the same shape.

    Computed from the logits, so a confident wrong pixel costs ``|logit|`` nats instead of ``log(0) = -inf``.
    """
    x = _check_binary(x)
    logits = _check_logits(logits, x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))


def bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x | z] = sigmoid(logits), same shape, in [0, 1]."""
    return torch.sigmoid(_check_float_tensor("logits", logits, 4, "(B, C, H, W)"))


def bernoulli_sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A binary image, every pixel 1. with probability sigmoid(logit), same shape as ``logits``."""
    return torch.bernoulli(bernoulli_mean(logits), generator=generator)


# ------------------------------------------------------------------------------ discretized logistic mixture
#
# We work on the [-1, 1] scale of PixelCNN++: grey level k sits at 2k/255 - 1 and owns the bin of half-width
# 1/255 around it; levels 0 and 255 also own the tails beyond -1 and 1. A decoder output of 0 means mid-grey.


def _split_mixture(params: object, x: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``(B, 3K, H, W)`` -> log mixture weights, means and clamped log-scales, each ``(B, K, H, W)``."""
    params = _check_float_tensor("params", params, 4, "(B, 3K, H, W)")
    if params.shape[1] % 3:
        raise ValueError(
            f"params must have 3K channels (mixture logits, means, log-scales), got {params.shape[1]} channels"
        )
    if x is not None and (x.shape[1] != 1 or (x.shape[0], *x.shape[2:]) != (params.shape[0], *params.shape[2:])):
        raise ValueError(
            f"x must have shape (B, 1, H, W) matching params (B, 3K, H, W), got x {tuple(x.shape)} and "
            f"params {tuple(params.shape)}"
        )
    logits, means, log_scales = params.chunk(3, dim=1)
    return F.log_softmax(logits, dim=1), means, log_scales.clamp(min=MIN_LOG_SCALE)


def _logistic_bin_log_prob(
    k: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(level k) under one discretized logistic; ``k`` (long) broadcasts
    against ``mean`` and ``log_scale``."""
    centre = 2 * k.to(mean.dtype) / 255 - 1
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (centre - mean + 1 / 255)  # the bin's edges, standardized
    lower = inv_scale * (centre - mean - 1 / 255)
    width = inv_scale * (2 / 255)  # = upper - lower
    # log(sigmoid(upper) - sigmoid(lower)), without subtracting two numbers that are
    # both close to 0 or to 1: sigmoid(u) - sigmoid(l)
    # = sigmoid(u) * sigmoid(-l) * (1 - exp(l - u)), exact and finite in every tail.
    log_mass = (
        F.logsigmoid(upper)
        + F.logsigmoid(-lower)
        + torch.log(-torch.expm1(-width.clamp(min=1e-5)))
    )
    # A bin far narrower than the scale (the width underflows the line above):
    # the density at the bin's centre times the bin's width.
    middle = inv_scale * (centre - mean)
    log_density_mass = (
        middle - log_scale - 2 * F.softplus(middle) + math.log(2 / 255)
    )
    log_mass = torch.where(width > 1e-5, log_mass, log_density_mass)
    # Levels 0 and 255 also own the tails: P(y < upper edge), P(y > lower edge).
    return torch.where(
        k == 0,
        F.logsigmoid(upper),
        torch.where(k == 255, F.logsigmoid(-lower), log_mass),
    )


def discretized_logistic_mixture_log_likelihood(
    params: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """log p(x | z) in nats, ``(B,)``, for 8-bit ``x: (B, 1, H, W)`` = k/255 and
    ``params: (B, 3K, H, W)``."""
    k = _check_8bit(x)
    log_weights, means, log_scales = _split_mixture(params, x)
    log_p = log_weights + _logistic_bin_log_prob(k, means, log_scales)  # (B, K, H, W)
    log_px = torch.logsumexp(log_p, dim=1)  # the mixture, pixel by pixel
    return log_px.sum(dim=(1, 2))


def discretized_logistic_mixture_log_probs(params: torch.Tensor) -> torch.Tensor:
    """log P(level) of all 256 grey levels of every pixel, ``(B, 1, H, W, 256)``: the pmf an entropy coder needs.

    Memory grows as B * K * H * W * 256; call it on one image, or a few, at a time.
    """
    log_weights, means, log_scales = _split_mixture(params)
    levels = torch.arange(256, device=params.device)
    log_p = _logistic_bin_log_prob(levels, means.unsqueeze(-1), log_scales.unsqueeze(-1))
    return torch.logsumexp(log_weights.unsqueeze(-1) + log_p, dim=1, keepdim=True)


def discretized_logistic_mixture_probs(params: torch.Tensor) -> torch.Tensor:
    """P(level) of all 256 grey levels of every pixel, ``(B, 1, H, W, 256)`` float64: what an entropy coder needs.

    Differences of the mixture's CDF at the 255 bin edges, in float64: several times faster than
    :func:`discretized_logistic_mixture_log_probs` and exact to ~1e-16 absolute, which is all a coder that
    quantizes probabilities to 24 bits can use. Far-tail levels may come out as exactly 0.
    """
    log_weights, means, log_scales = _split_mixture(_check_float_tensor("params", params, 4, "(B, 3K, H, W)").double())
    edges = (2 * torch.arange(1, 256, device=params.device, dtype=torch.float64) - 1) / 255 - 1
    cdf = torch.sigmoid((edges - means.unsqueeze(-1)) * torch.exp(-log_scales).unsqueeze(-1))  # (B, K, H, W, 255)
    cdf = F.pad(cdf, (1, 1), value=0.0)
    cdf[..., -1] = 1.0
    probs = cdf[..., 1:] - cdf[..., :-1]  # (B, K, H, W, 256)
    return (log_weights.exp().unsqueeze(-1) * probs).sum(dim=1, keepdim=True)


def discretized_logistic_mixture_mean(params: torch.Tensor) -> torch.Tensor:
    """E[x | z] in [0, 1], ``(B, 1, H, W)``, exact for the discretized mixture.

    Uses E[k] = sum over j = 0..254 of P(k > j), where P(k > j) = 1 - CDF at the upper edge of level j.
    """
    log_weights, means, log_scales = _split_mixture(params)
    upper_edges = (2 * torch.arange(255, device=params.device, dtype=params.dtype) + 1) / 255 - 1
    p_above = torch.sigmoid((means.unsqueeze(-1) - upper_edges) * torch.exp(-log_scales).unsqueeze(-1))
    return ((log_weights.exp() * p_above.sum(dim=-1)).sum(dim=1, keepdim=True) / 255).clamp(0, 1)


def discretized_logistic_mixture_sample(
    params: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """An 8-bit image ``(B, 1, H, W)`` of values k/255: pick a component, draw a logistic, round to its level."""
    log_weights, means, log_scales = _split_mixture(params)
    shape = (means.shape[0], 1, *means.shape[2:])
    u = torch.rand(shape, generator=generator, dtype=params.dtype, device=params.device)
    component = (log_weights.exp().cumsum(dim=1) < u).sum(dim=1, keepdim=True).clamp(max=means.shape[1] - 1)
    mean, log_scale = means.gather(1, component), log_scales.gather(1, component)
    u = torch.rand(shape, generator=generator, dtype=params.dtype, device=params.device)
    y = mean + torch.exp(log_scale) * torch.logit(u)  # a logistic draw on [-1, 1]
    return ((y + 1) * 255 / 2).round().clamp(0, 255) / 255  # nearest level; the tails go to 0 and 255


# -------------------------------------------------------------------------------------------------- dispatch


def _check_likelihood(name: object) -> str:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return name


def log_likelihood(likelihood: str, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) in nats, ``(B,)``, under the named likelihood (one of :data:`LIKELIHOODS`)."""
    if _check_likelihood(likelihood) == "bernoulli":
        return bernoulli_log_likelihood(params, x)
    return discretized_logistic_mixture_log_likelihood(params, x)


def likelihood_mean(likelihood: str, params: torch.Tensor) -> torch.Tensor:
    """E[x | z], ``(B, 1, H, W)`` in [0, 1], under the named likelihood."""
    if _check_likelihood(likelihood) == "bernoulli":
        return bernoulli_mean(params)
    return discretized_logistic_mixture_mean(params)


def likelihood_sample(likelihood: str, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x ~ p(x | z), ``(B, 1, H, W)`` in [0, 1] (binary or k/255), under the named likelihood."""
    if _check_likelihood(likelihood) == "bernoulli":
        return bernoulli_sample(params, generator)
    return discretized_logistic_mixture_sample(params, generator)


# -------------------------------------------------------------------------------------- Gaussians and the KL


def _check_gaussian(mu: object, logvar: object) -> None:
    _check_float_tensor("mu", mu, 2, "(B, D)")
    _check_float_tensor("logvar", logvar, 2, "(B, D)")
    if mu.shape != logvar.shape:
        raise ValueError(
            f"mu and logvar must have the same shape (B, D), got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in nats, ``(B,)``, for ``mu, logvar:
    (B, D)``: the rate."""
    _check_gaussian(mu, logvar)
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1)


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I): a sample of q(z | x),
    ``(B, D)``, differentiable in both ``mu`` and ``logvar``."""
    _check_gaussian(mu, logvar)
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension; the leading dimensions broadcast."""
    for name, t in (("z", z), ("mu", mu), ("logvar", logvar)):
        _check_float_tensor(name, t, None, "(..., D)")
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).square() * torch.exp(-logvar)).sum(dim=-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension: the prior's log-density."""
    _check_float_tensor("z", z, None, "(..., D)")
    return -0.5 * (math.log(2 * math.pi) + z.square()).sum(dim=-1)


# -------------------------------------------------------------------------------- learned priors (Chapter 8)


def gaussian_entropy(logvar: torch.Tensor) -> torch.Tensor:
    """H[N(mu, diag(exp(logvar)))] in nats, ``(B,)``, for ``logvar: (B, D)``."""
    _check_float_tensor("logvar", logvar, 2, "(B, D)")
    return 0.5 * (math.log(2 * math.pi * math.e) + logvar).sum(dim=1)


def mixture_log_density(
    z: torch.Tensor, log_weights: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """log sum_k w_k N(z; mu_k, diag(exp(logvar_k))) over the last dimension of ``z: (..., D)``.

    ``log_weights: (K,)`` (they sum to one), ``mu, logvar: (K, D)``: a mixture of K diagonal Gaussians, as the
    VampPrior and the mixture-of-Gaussians prior are. Returns ``(...)``.
    """
    for name, t, ndim in (("z", z, None), ("log_weights", log_weights, 1), ("mu", mu, 2), ("logvar", logvar, 2)):
        _check_float_tensor(name, t, ndim, "(K,)" if ndim == 1 else "(K, D)")
    if mu.shape != logvar.shape or mu.shape[:1] != log_weights.shape or mu.shape[1:] != z.shape[-1:]:
        raise ValueError(
            f"a mixture of K Gaussians in D dimensions needs log_weights (K,), mu and logvar (K, D) and z (..., D); "
            f"got {tuple(log_weights.shape)}, {tuple(mu.shape)}, {tuple(logvar.shape)} and {tuple(z.shape)}"
        )
    return torch.logsumexp(log_weights + gaussian_log_density(z.unsqueeze(-2), mu, logvar), dim=-1)


def prior_log_density(model, z: torch.Tensor, components: tuple | None = None) -> torch.Tensor:
    """log p(z) under ``model``'s prior on its (top) latent: N(0, I), or the mixture of
    ``model.prior_components()`` (pass ``components`` to reuse them across calls)."""
    if getattr(model, "prior", "standard") == "standard":
        return standard_normal_log_density(z)
    return mixture_log_density(z, *(components or model.prior_components()))


def latent_rate(
    model, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """KL(q(z | x) || p(z)), ``(B,)``: analytic for the N(0, I) prior; for a learned
    prior, the entropy of q analytic and log p(z) at the sample ``z`` (unbiased)."""
    if getattr(model, "prior", "standard") == "standard":
        return gaussian_kl(mu, logvar)
    return -gaussian_entropy(logvar) - prior_log_density(model, z)


# ------------------------------------------------------------------------------------------------ the bounds


def _check_model(model: object) -> None:
    missing = [name for name in ("encode", "decode", "likelihood") if not hasattr(model, name)]
    if missing:
        raise TypeError(f"model must have encode, decode and likelihood; {type(model).__name__} lacks {missing}")


def is_hierarchical(model) -> bool:
    """Whether ``model`` has more than one layer of latents (``latent_dims``, bottom first)."""
    return len(getattr(model, "latent_dims", ())) > 1


def _check_objective(beta: object, free_bits: object, layers: int) -> tuple[list[float], float]:
    betas = list(beta) if isinstance(beta, (list, tuple)) else [beta] * layers
    if len(betas) != layers or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= 0
                                   for b in betas):  # fmt: skip
        raise ValueError(
            f"beta must be a non-negative number, or one per latent layer ({layers}, bottom first), got {beta!r}"
        )
    if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)) or not 0 <= free_bits < math.inf:
        raise ValueError(f"free_bits must be a finite non-negative number of nats, got {free_bits!r}")
    return betas, float(free_bits)


def _objective(
    distortion: torch.Tensor, layer_rates: torch.Tensor, betas: list[float], free_bits: float
) -> dict[str, torch.Tensor]:
    """The ELBO's entries from the distortion ``(B,)`` and the rates of the layers ``(B, L)``; the loss weighs
    layer l by ``betas[l]``, and with ``free_bits`` > 0 a layer whose batch-mean rate is below ``free_bits``
    nats costs a constant ``free_bits`` instead (no gradient pulls it further towards its prior)."""
    rate, charged = layer_rates.sum(dim=1), layer_rates
    if free_bits > 0:
        used = layer_rates.mean(dim=0, keepdim=True).detach() >= free_bits  # (1, L); no host sync
        charged = torch.where(used, layer_rates, torch.full_like(layer_rates, free_bits))
    weights = torch.tensor(betas, dtype=layer_rates.dtype, device=layer_rates.device)
    return {
        "elbo": -(distortion + rate),
        "distortion": distortion,
        "rate": rate,
        "layer_rates": layer_rates,
        "loss": distortion + (weights * charged).sum(dim=1),
    }


def elbo(
    model,
    x: torch.Tensor,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    free_bits: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The ELBO with one z ~ q(z | x) per example; every entry ``(B,)`` in nats.

    ``distortion`` = -log p(x | z), ``rate`` = KL(q(z | x) || p(z)) (analytic for
    the N(0, I) prior, :func:`latent_rate` for a learned one), ``elbo`` =
    -(distortion + rate) and ``loss`` = distortion + beta * rate, the beta-VAE
    objective to minimise (beta = 1: the negative ELBO). A model with several latent
    layers goes to :func:`hierarchical_elbo` (``free_bits`` is explained there).
    """
    _check_model(model)
    if is_hierarchical(model):
        return hierarchical_elbo(model, x, beta, generator, free_bits)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"beta must be a non-negative number, got {beta!r}")
    mu, logvar = model.encode(x)
    z = reparameterize(mu, logvar, generator)
    distortion = -log_likelihood(model.likelihood, model.decode(z), x)
    rate = latent_rate(model, mu, logvar, z)
    if free_bits:
        betas, free_bits = _check_objective(beta, free_bits, 1)
        return _objective(distortion, rate.unsqueeze(1), betas, free_bits)
    return {
        "elbo": -(distortion + rate),
        "distortion": distortion,
        "rate": rate,
        "loss": distortion + beta * rate,
    }


def hierarchical_latents(
    model, x: torch.Tensor, noise: list[torch.Tensor] | None = None, generator: torch.Generator | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """One draw of the bottom-up chain z_1 ~ q(z_1 | x), z_2 ~ q(z_2 | z_1), ...: lists (bottom first) of the
    latents ``(B, D_l)`` and of the posterior parameters ``mu, logvar`` each was drawn from.

    ``noise``: the standard-normal draws to use, one ``(B, D_l)`` per layer (else drawn from ``generator``).
    """
    zs, mus, logvars = [], [], []
    given = x
    for level in range(len(model.latent_dims)):
        mu, logvar = model.posterior(level, given)
        eps = noise[level] if noise is not None else torch.randn(
            mu.shape, generator=generator, dtype=mu.dtype, device=mu.device
        )
        given = mu + torch.exp(0.5 * logvar) * eps
        zs.append(given), mus.append(mu), logvars.append(logvar)
    return zs, mus, logvars


def hierarchical_layer_rates(
    model, zs: list[torch.Tensor], mus: list[torch.Tensor], logvars: list[torch.Tensor]
) -> torch.Tensor:
    """The rate of each latent layer, ``(B, L)`` nats, bottom first, at one drawn chain.

    For l < L: -H[q(z_l | .)] - log p(z_l | z_{l+1}), the entropy analytic; for the
    top: KL(q(z_L | z_{L-1}) || N(0, I)), analytic. They add up to the chain's KL, in
    expectation.
    """
    rates = []
    for level in range(len(zs) - 1):
        prior_mu, prior_logvar = model.conditional_prior(level, zs[level + 1])
        log_p = gaussian_log_density(zs[level], prior_mu, prior_logvar)
        rates.append(-gaussian_entropy(logvars[level]) - log_p)
    rates.append(gaussian_kl(mus[-1], logvars[-1]))
    return torch.stack(rates, dim=1)


def hierarchical_elbo(
    model,
    x: torch.Tensor,
    beta: float | list[float] = 1.0,
    generator: torch.Generator | None = None,
    free_bits: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The ELBO of a model with latent layers z_1 (bottom) ... z_L (top) in Bit-Swap's
    Markov chains, q(z_1 | x) q(z_2 | z_1) ... and p(z_L) ... p(z_1 | z_2) p(x | z_1),
    with one draw of the chain per image.

    The entries of :func:`elbo`, plus ``layer_rates: (B, L)``, bottom first
    (:func:`hierarchical_layer_rates`). ``beta``: one weight for all layers, or one per
    layer (a per-layer KL warm-up). ``free_bits`` (nats per layer; Kingma et al. 2016):
    a layer whose batch-mean rate is below it costs that constant in the loss, so
    nothing pushes it the rest of the way to its prior (posterior collapse).
    """
    _check_model(model)
    betas, free_bits = _check_objective(beta, free_bits, len(model.latent_dims))
    zs, mus, logvars = hierarchical_latents(model, x, generator=generator)
    distortion = -log_likelihood(model.likelihood, model.decode(zs[0]), x)
    layer_rates = hierarchical_layer_rates(model, zs, mus, logvars)
    return _objective(distortion, layer_rates, betas, free_bits)


def iwae_bound(
    model,
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    chunk_size: int = 32,
) -> torch.Tensor:
    """The importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i | x) with
    z_i ~ q(z | x), ``(B,)`` in nats.

    k = 1 is the ELBO in expectation; the bound grows with k towards log p(x). The k
    noise draws are made up front (k * B * D numbers) and decoded ``chunk_size``
    samples at a time, so the result does not depend on ``chunk_size`` and memory
    stays at ``chunk_size * B`` decoder outputs. Wrap it in ``torch.no_grad()`` for
    evaluation. A hierarchical model's z is its whole chain of latents.
    """
    _check_model(model)
    k = _check_positive_int("k", k)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    if is_hierarchical(model):
        return _hierarchical_iwae(model, x, k, generator, chunk_size)
    mu, logvar = model.encode(x)
    shape = (k, *mu.shape)
    eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
    learned = getattr(model, "prior", "standard") != "standard"
    prior = model.prior_components() if learned else None  # K components, computed once
    log_weights = []
    for eps_chunk in eps.split(chunk_size):
        z = mu + torch.exp(0.5 * logvar) * eps_chunk  # (c, B, D)
        c = len(z)
        params = model.decode(z.flatten(0, 1))
        log_px_z = log_likelihood(model.likelihood, params, x.repeat(c, 1, 1, 1))
        log_pz = prior_log_density(model, z, prior)
        log_pz_qz = log_pz - gaussian_log_density(z, mu, logvar)
        log_weights.append(log_px_z.view(c, -1) + log_pz_qz)
    return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)


def _hierarchical_iwae(model, x: torch.Tensor, k: int, generator, chunk_size: int) -> torch.Tensor:
    """:func:`iwae_bound` for a hierarchical model: the noise of every layer drawn up front, layer by layer."""
    b = len(x)
    p = next(model.parameters())
    noise = [torch.randn((k, b, d), generator=generator, dtype=p.dtype, device=p.device) for d in model.latent_dims]
    log_weights = []
    for start in range(0, k, chunk_size):
        chunk = [eps[start : start + chunk_size].flatten(0, 1) for eps in noise]
        c = len(chunk[0]) // b
        xs = x.repeat(c, 1, 1, 1)
        zs, mus, logvars = hierarchical_latents(model, xs, noise=chunk)
        log_w = log_likelihood(model.likelihood, model.decode(zs[0]), xs)
        log_w = log_w + standard_normal_log_density(zs[-1])
        for level, (z, mu, logvar) in enumerate(zip(zs, mus, logvars)):
            log_w = log_w - gaussian_log_density(z, mu, logvar)
            if level + 1 < len(zs):
                log_w = log_w + gaussian_log_density(z, *model.conditional_prior(level, zs[level + 1]))
        log_weights.append(log_w.view(c, b))
    return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)


# ------------------------------------------------------------------------------------------------------ units


def nats_to_bits_per_dim(nats: float | torch.Tensor, dims: int = 784) -> float | torch.Tensor:
    """Nats per image -> bits per pixel: divide by dims * ln 2 (784 * ln 2 nats = 1 bit/dim)."""
    return nats / (_check_positive_int("dims", dims) * math.log(2))


def bits_per_dim_to_nats(bits: float | torch.Tensor, dims: int = 784) -> float | torch.Tensor:
    """Bits per pixel -> nats per image, the inverse of :func:`nats_to_bits_per_dim`."""
    return bits * (_check_positive_int("dims", dims) * math.log(2))
