"""Bits-back for the models of Chapter 8: a learned mixture prior (VampPrior, mixture of Gaussians) and a
hierarchy of latent layers, in Bit-Swap's order (Kingma et al. 2019) or in BB-ANS's (Townsend et al. 2019).

Both kinds of model are coded as a chain of latent layers, bottom first, each popped with its posterior and
pushed with its prior:

- a :class:`~vae_utils.model.HierarchicalVAE`: z_1 ... z_L, each on the bucket grid of
  :func:`~vae_utils.codec.latent_grid`; q(z_1 | x), q(z_{l+1} | z_l) are popped over windows (as in Chapter 6),
  p(z_l | z_{l+1}) is pushed over all buckets (z_l was drawn from q, so it may lie anywhere), and z_L with
  the N(0, I) prior, uniform over the buckets, whitened by the latent mask.
- a ConvVAE with a mixture prior p(z) = sum_k w_k N(z; mu_k, sigma_k): its component index k is a second,
  discrete layer. q(k | z) = w_k P(z | k) / P(z), with P(z | k) the mass of z's buckets under component k,
  is the exact posterior, so pushing z with P(z | k) and k with w_k after popping k with q(k | z) costs
  exactly -log P(z) = -log sum_k w_k P(z | k): the mixture's own code length, without ever summing K
  tables. VampPrior weights are equal, so k is pushed uniform (and whitened); a mixture of Gaussians pushes
  k with its weights.

**Orders.** BB-ANS pops every layer first and then pushes x and the layers, so the first image of a file
borrows the bits of all its layers from the initial words. Bit-Swap interleaves: pop z_1, push x | z_1, pop
z_2, push z_1 | z_2, ...: from z_2 on, each pop reads bits that the push just before it put there, so the
initial bits are those of z_1 alone, however deep the hierarchy. Both orders cost the same per image once
the stack holds enough bits; only the initial bits differ (Chapter 8 measures them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np
import torch

from vae_utils.codec.bitsback import (
    _as_input,
    _bucket_centres,
    _grid,
    _likelihood_model,
    _pop_posterior,
    _push_posterior,
    latent_mask,
    posterior_bucket_probs,
)
from vae_utils.codec.format import (
    _ANS,
    _MODELS,
    DEEP_ORDERS,
    CodecError,
    Compressed,
    Header,
    _bar,
    _finish,
    _one_thread,
    initial_words,
    read_header,
)
from vae_utils.elbo import is_hierarchical

ORDERS = DEEP_ORDERS
"""The orders in which a model with several latent layers can be coded (see the module docstring)."""


def is_deep(model) -> bool:
    """Whether ``model`` is coded by this module: a hierarchy, or a learned (mixture) prior."""
    return is_hierarchical(model) or getattr(model, "prior", "standard") != "standard"


def layer_count(model) -> int:
    """The latent layers the coder sees: L for a hierarchy, 2 (z and the component index) for a mixture."""
    return len(model.latent_dims) if is_hierarchical(model) else 2


def seed_words(model) -> int:
    """Initial words for a file: enough for BB-ANS to pop every layer of the first image (the unused ones
    are stripped from the file, so a generous seed costs nothing)."""
    dims = model.latent_dims if is_hierarchical(model) else (model.latent_dim, 1)
    return sum(dims) + 8


def prior_bucket_probs(mu: torch.Tensor, logvar: torch.Tensor, latent_bits: int) -> np.ndarray:
    """N(mu, diag(exp(logvar))) over every bucket of every dimension, ``(D, 2**latent_bits)`` float64.

    A layer is pushed with its prior after being drawn from its posterior, so its bucket may lie anywhere:
    the table covers all buckets (constriction gives each at least 2**-24, which caps a far-tail bucket's
    cost at 24 bits instead of making it uncodable).
    """
    if not (torch.isfinite(mu).all() and torch.isfinite(logvar).all()):
        raise ValueError("the model returned a non-finite prior mean or log-variance; its weights are broken")
    edges, _ = _grid(latent_bits)
    mu = mu.double().reshape(-1, 1)
    sigma = torch.exp(0.5 * logvar.double()).clamp(min=1e-12).reshape(-1, 1)
    cdf = torch.special.ndtr((edges - mu) / sigma)
    return (cdf[:, 1:] - cdf[:, :-1]).numpy()


def _log_bucket_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for standardized edges, accurate in both tails (floored at -1e6)."""
    flip = lower > 0  # in the upper tail, use Phi(-lower) - Phi(-upper)
    a, b = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return (log_b + torch.log1p(-torch.exp(log_a - log_b).clamp(max=1.0))).clamp(min=-1e6)


def component_posterior(buckets: np.ndarray, components: tuple, latent_bits: int) -> np.ndarray:
    """q(k | z) for a mixture prior, ``(K,)`` float64: w_k P(z | k) normalized, where P(z | k) is the mass of
    the buckets ``(D,)`` of z under component k, the product over dimensions."""
    log_weights, mu, logvar = (t.detach().double() for t in components)
    edges, _ = _grid(latent_bits)
    index = torch.from_numpy(buckets.astype(np.int64))
    sigma = torch.exp(0.5 * logvar)
    lower, upper = (edges[index] - mu) / sigma, (edges[index + 1] - mu) / sigma  # (K, D)
    log_joint = log_weights + _log_bucket_mass(lower, upper).sum(dim=1)
    return torch.softmax(log_joint, dim=0).numpy()


class _Layers:
    """A model's latent layers as the coder sees them, bottom first: how to pop each with its posterior and
    push it with its prior (and the inverses). Symbols are bucket indices, or ``[k]`` for a component."""

    def __init__(self, model, latent_bits: int) -> None:
        self.model, self.bits = model, latent_bits
        self.hierarchy = is_hierarchical(model)
        self.depth = layer_count(model)
        if not self.hierarchy:  # the mixture, computed once per file (the VampPrior's K encoder passes)
            self.components = tuple(t.detach() for t in model.prior_components())
            self.k = len(self.components[0])
            self.uniform = getattr(model, "prior", "") == "vamp"  # equal weights: push k uniform, whitened
            self.weights = self.components[0].double().exp().numpy()

    def _posterior(self, level: int, below: np.ndarray):
        if level == 0:
            return posterior_bucket_probs(*self.model.encode(_as_input(self.model, below)), self.bits)
        if self.hierarchy:
            z = _bucket_centres(below, self.bits)
            return posterior_bucket_probs(*self.model.posterior(level, z), self.bits)
        return component_posterior(below, self.components, self.bits)

    def pop_posterior(self, coder, level: int, below: np.ndarray) -> np.ndarray:
        """Draw layer ``level`` from its posterior given the layer below (x for level 0), borrowing bits."""
        q = self._posterior(level, below)
        if isinstance(q, np.ndarray):  # a component index
            return np.array([coder.decode(_MODELS.Categorical(q, perfect=False))], dtype=np.int32)
        return _pop_posterior(coder, *q)

    def push_posterior(self, coder, level: int, symbols: np.ndarray, below: np.ndarray) -> None:
        """The inverse of :meth:`pop_posterior`: give the borrowed bits back."""
        q = self._posterior(level, below)
        if isinstance(q, np.ndarray):
            coder.encode_reverse(int(symbols[0]), _MODELS.Categorical(q, perfect=False))
        else:
            _push_posterior(coder, symbols, *q)

    def _prior_table(self, level: int, above: np.ndarray) -> np.ndarray:
        if self.hierarchy:
            z = _bucket_centres(above, self.bits)
            return prior_bucket_probs(*self.model.conditional_prior(level, z), self.bits)
        _, mu, logvar = self.components
        return prior_bucket_probs(mu[int(above[0])], logvar[int(above[0])], self.bits)

    def push_prior(self, coder, level: int, symbols: np.ndarray, above: np.ndarray) -> None:
        """Push layer ``level`` < depth - 1 with its prior given the layer above."""
        coder.encode_reverse(symbols, _MODELS.Categorical(perfect=False), self._prior_table(level, above))

    def pop_prior(self, coder, level: int, above: np.ndarray) -> np.ndarray:
        return coder.decode(_MODELS.Categorical(perfect=False), self._prior_table(level, above)).astype(np.int32)

    def top_mask(self, key: bytes, index: int) -> np.ndarray:
        """The whitening offsets of image ``index``'s top layer (zero where its prior is not uniform)."""
        if self.hierarchy:
            return latent_mask(key, index, self.model.latent_dims[-1], self.bits)
        if not self.uniform:
            return np.zeros(1, dtype=np.int32)
        digest = hashlib.sha256(b"vae_utils.codec component mask\0" + key + index.to_bytes(4, "little")).digest()
        return np.array([int.from_bytes(digest[:8], "little") % self.k], dtype=np.int32)

    def push_top(self, coder, symbols: np.ndarray, mask: np.ndarray) -> None:
        """Push the top layer with its fixed prior: uniform (with the mask), or the mixture weights."""
        if self.hierarchy:
            n = 2**self.bits
            coder.encode_reverse(((symbols + mask) % n).astype(np.int32), _MODELS.Uniform(n))
        elif self.uniform:
            coder.encode_reverse(((symbols + mask) % self.k).astype(np.int32), _MODELS.Uniform(self.k))
        else:
            coder.encode_reverse(int(symbols[0]), _MODELS.Categorical(self.weights, perfect=False))

    def pop_top(self, coder, mask: np.ndarray) -> np.ndarray:
        if self.hierarchy:
            n = 2**self.bits
            return ((coder.decode(_MODELS.Uniform(n), len(mask)) - mask) % n).astype(np.int32)
        if self.uniform:
            return ((coder.decode(_MODELS.Uniform(self.k), 1) - mask) % self.k).astype(np.int32)
        return np.array([coder.decode(_MODELS.Categorical(self.weights, perfect=False))], dtype=np.int32)

    def push_pixels(self, coder, pixels: np.ndarray, z_1: np.ndarray) -> None:
        family, probs = _likelihood_model(self.model, self.model.decode(_bucket_centres(z_1, self.bits)))
        coder.encode_reverse(pixels, family, probs)

    def pop_pixels(self, coder, z_1: np.ndarray) -> np.ndarray:
        family, probs = _likelihood_model(self.model, self.model.decode(_bucket_centres(z_1, self.bits)))
        return coder.decode(family, probs)


def _check_order(order: object) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    return order


@torch.no_grad()
def push_deep_image(
    coder, layers: _Layers, pixels: np.ndarray, order: str, mask: np.ndarray
) -> int:
    """Bits-back for one image ``(784,) int32`` and all its latent layers, in ``order``.

    Returns the stack's low-water mark: the fewest words it held after a pop.
    """
    z, low = [], coder.num_words()
    if _check_order(order) == "bbans":  # every pop first, then every push
        for level in range(layers.depth):
            z.append(layers.pop_posterior(coder, level, z[-1] if z else pixels))
            low = min(low, coder.num_words())
        layers.push_pixels(coder, pixels, z[0])
        for level in range(layers.depth - 1):
            layers.push_prior(coder, level, z[level], z[level + 1])
    else:  # Bit-Swap: each pop reads the bits the push before it put there
        z.append(layers.pop_posterior(coder, 0, pixels))
        low = min(low, coder.num_words())
        layers.push_pixels(coder, pixels, z[0])
        for level in range(1, layers.depth):
            z.append(layers.pop_posterior(coder, level, z[level - 1]))
            low = min(low, coder.num_words())
            layers.push_prior(coder, level - 1, z[level - 1], z[level])
    layers.push_top(coder, z[-1], mask)
    return low


@torch.no_grad()
def pop_deep_image(coder, layers: _Layers, order: str, mask: np.ndarray, floor_words: int = 0) -> np.ndarray:
    """The exact inverse of :func:`push_deep_image` (same ``order`` and ``mask``): the image's symbols
    ``(784,) int32``. Raises :class:`CodecError` if the stack falls below ``floor_words``."""

    def check() -> None:
        if coder.num_words() < floor_words:
            raise CodecError("the stream ran out of bits before the last image: the file is corrupted")

    z = [None] * layers.depth
    z[-1] = layers.pop_top(coder, mask)
    if _check_order(order) == "bbans":
        for level in reversed(range(layers.depth - 1)):
            z[level] = layers.pop_prior(coder, level, z[level + 1])
        pixels = layers.pop_pixels(coder, z[0])
        check()
        for level in reversed(range(layers.depth)):
            layers.push_posterior(coder, level, z[level], z[level - 1] if level else pixels)
        return pixels
    for level in reversed(range(1, layers.depth)):
        z[level - 1] = layers.pop_prior(coder, level - 1, z[level])
        check()
        layers.push_posterior(coder, level, z[level], z[level - 1])
    pixels = layers.pop_pixels(coder, z[0])
    check()
    layers.push_posterior(coder, 0, z[0], pixels)
    return pixels


def encode_stream(
    model, symbols: np.ndarray, latent_bits: int, order: str, key: bytes, seed: np.ndarray, progress: bool = False
) -> tuple[np.ndarray, int, np.ndarray]:
    """Push every image of ``symbols: (N, 784) int32`` on one stack that starts from the ``seed`` words,
    first image first. Returns the stack's words, how many bottom words are the seed's and untouched
    (``stripped``, left out of a file), and each image's net cost in bits ``(N,)`` (measured on the stack)."""
    order = _check_order(order)
    coder = _ANS(seed.copy())
    levels, low = [coder.num_valid_bits()], coder.num_words()
    with _one_thread():
        layers = _Layers(model, latent_bits)
        for i in _bar(len(symbols), progress, f"{order} encode"):
            low = min(low, push_deep_image(coder, layers, symbols[i], order, layers.top_mask(key, i)))
            levels.append(coder.num_valid_bits())
    words = coder.get_compressed()
    stripped = max(low - 2, 0)  # the state holds at most 2 words; below the low-water mark lies the seed
    if low < 3 or not np.array_equal(words[:stripped], seed[:stripped]):
        raise RuntimeError(f"bits-back coding ran out of initial bits (low-water mark {low} words); please report this")
    return words, stripped, np.diff(np.asarray(levels, dtype=np.float64))


def decode_stream(
    model, words: np.ndarray, n_images: int, latent_bits: int, order: str, key: bytes, seed: np.ndarray,
    stripped: int, progress: bool = False,
) -> np.ndarray:  # fmt: skip
    """The inverse of :func:`encode_stream`: ``words`` without the ``stripped`` seed words -> the images'
    symbols ``(N, 784) uint8``; the stack must end in exactly the seed."""
    coder = _ANS(np.concatenate([seed[:stripped], words]))
    out = np.empty((n_images, 784), dtype=np.uint8)
    with _one_thread():
        layers = _Layers(model, latent_bits)
        for i in _bar(n_images, progress, f"{order} decode", backwards=True):
            out[i] = pop_deep_image(coder, layers, order, layers.top_mask(key, i), stripped + 2)
    if not np.array_equal(coder.get_compressed(), seed):
        raise CodecError("the stream does not end in its initial bits: the file is corrupted (or its header was edited)")
    return out


def compress_deep(
    model, images: np.ndarray, latent_bits: int, order: str, mid: bytes, progress: bool = False
) -> Compressed:
    """A ``lossless-binary-deep`` or ``lossless-8bit-deep`` file (format version 2) of ``images`` (checked by the
    caller, :func:`vae_utils.codec.compress`): every image on one stack, its layers in ``order``."""
    start = time.perf_counter()
    mode = "lossless-binary-deep" if model.likelihood == "bernoulli" else "lossless-8bit-deep"
    header = Header(mode, mid, len(images), latent_bits=latent_bits, seed_words=seed_words(model), version=2,
                    order=_check_order(order), layers=layer_count(model))  # fmt: skip
    key = header.seed_key()
    seed = initial_words(key, header.seed_words)
    symbols = images.reshape(len(images), -1).astype(np.int32)
    words, stripped, net_bits = encode_stream(model, symbols, latent_bits, order, key, seed, progress)
    blob = _finish(dataclasses.replace(header, stripped_words=stripped), words[stripped:])
    initial = 32.0 * (len(words) - stripped) - net_bits.sum()
    return Compressed(blob, read_header(blob), net_bits, float(initial), time.perf_counter() - start)


def decode_deep(model, header: Header, payload: np.ndarray, progress: bool = False) -> np.ndarray:
    """The images ``(N, 28, 28) uint8`` of a ``-deep`` file, whose header matches ``model`` (checked by
    :func:`vae_utils.codec.decompress`)."""
    if not is_deep(model) or layer_count(model) != header.layers:
        kind = f"{layer_count(model)} latent layers" if is_deep(model) else "one latent layer and an N(0, I) prior"
        raise CodecError(f"the file codes {header.layers} latent layers, but the given model has {kind}; "
                         "decompress with the checkpoint that compressed it")  # fmt: skip
    key = header.seed_key()
    seed = initial_words(key, header.seed_words)
    images = decode_stream(model, payload, header.n_images, header.latent_bits, header.order, key, seed,
                           header.stripped_words, progress)  # fmt: skip
    return images.reshape(header.n_images, header.height, header.width)
