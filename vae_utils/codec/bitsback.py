"""Bits-back coding with ANS (Townsend et al. 2019): the latent buckets, q(z | x) over them, one image pushed
and popped, and a whole dataset on one stack. See the package docstring for the two details (whitened latents,
windowed posteriors) that keep the real rate at the -ELBO."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time

import numpy as np
import torch

from vae_utils import data
from vae_utils.codec.format import (
    _ANS,
    _MODELS,
    LATENT_BITS_RANGE,
    WINDOW_SIGMAS,
    CodecError,
    Compressed,
    Header,
    _bar,
    _check_int,
    _finish,
    _one_thread,
    initial_words,
    read_header,
)
from vae_utils.elbo import bernoulli_mean, discretized_logistic_mixture_probs
from vae_utils.model import IMAGE_SHAPE


@functools.lru_cache(maxsize=4)
def _grid(latent_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = 2**latent_bits
    edges = torch.special.ndtri(torch.arange(n + 1, dtype=torch.float64) / n)  # -inf, ..., +inf
    centres = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()
    return edges, centres


def latent_grid(latent_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The buckets of one latent dimension, of mass 2**-latent_bits each under N(0, 1).

    Returns ``edges: (2**b + 1,) float64`` (from -inf to +inf) and ``centres: (2**b,)
    float32``, the prior quantile of each bucket's middle mass: the z it stands for.
    """
    edges, centres = _grid(_check_int("latent_bits", latent_bits, *LATENT_BITS_RANGE))
    return edges.clone(), centres.clone()


def posterior_bucket_probs(
    mu: torch.Tensor, logvar: torch.Tensor, latent_bits: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """q(z | x) over the buckets within :data:`WINDOW_SIGMAS` standard deviations of ``mu``, per dimension.

    ``mu, logvar: (1, D)`` or ``(D,)``, one image's posterior. Returns ``starts: (D,) int64``, the first bucket of
    each dimension's window, and ``probs``: D float64 arrays, the mass of N(mu, exp(logvar)) in buckets
    ``starts[d], starts[d] + 1, ...``. The buckets outside are left out: constriction gives every entry of a
    table at least 2**-24, which over all 2**latent_bits buckets would leak mass into the far tails of a narrow
    q (see *windowed posteriors* in the module docstring).
    """
    if not (torch.isfinite(mu).all() and torch.isfinite(logvar).all()):
        raise ValueError("the model's encoder returned a non-finite mu or logvar; its weights are broken")
    edges, _ = _grid(latent_bits)
    n = len(edges) - 1
    mu, sigma = mu.double().reshape(-1, 1), torch.exp(0.5 * logvar.double()).clamp(min=1e-12).reshape(-1, 1)
    lo = torch.searchsorted(edges, mu - WINDOW_SIGMAS * sigma, right=True) - 1  # the bucket holding mu - k sigma
    hi = torch.searchsorted(edges, mu + WINDOW_SIGMAS * sigma)  # one past the bucket holding mu + k sigma
    lo, hi = lo.clamp(0, n - 2), hi.clamp(2, n)
    lo, hi = torch.minimum(lo, hi - 2), torch.maximum(hi, lo + 2)  # at least two buckets, as constriction needs
    index = torch.minimum(lo + torch.arange(int((hi - lo).max()) + 1), hi)  # each window's edges, padded
    cdf = torch.special.ndtr((edges[index] - mu) / sigma)
    probs = (cdf[:, 1:] - cdf[:, :-1]).numpy()
    return lo[:, 0].numpy(), [row[:size] for row, size in zip(probs, (hi - lo)[:, 0].tolist())]


def _pop_posterior(coder, starts: np.ndarray, probs: list[np.ndarray]) -> np.ndarray:
    """Pop one bucket per dimension from q, first dimension first."""
    return np.array([start + coder.decode(_MODELS.Categorical(p, perfect=False)) for start, p in zip(starts, probs)],
                    dtype=np.int32)  # fmt: skip


def _push_posterior(coder, buckets: np.ndarray, starts: np.ndarray, probs: list[np.ndarray]) -> None:
    """The inverse of :func:`_pop_posterior`: push the buckets back with q, last dimension first."""
    for bucket, start, p in reversed(list(zip(buckets, starts, probs))):
        coder.encode_reverse(int(bucket - start), _MODELS.Categorical(p, perfect=False))


def _likelihood_model(model, params: torch.Tensor) -> tuple[object, np.ndarray]:
    """constriction's model family and its per-pixel parameters for p(x | z): P(x = 1), or the 256-level pmf."""
    if model.likelihood == "bernoulli":
        return _MODELS.Bernoulli(perfect=False), bernoulli_mean(params).double().numpy().reshape(-1)
    probs = discretized_logistic_mixture_probs(params)  # (1, 1, 28, 28, 256) float64
    return _MODELS.Categorical(perfect=False), probs.numpy().reshape(-1, 256)


def _bucket_centres(buckets: np.ndarray, latent_bits: int) -> torch.Tensor:
    """Bucket indices ``(D,)`` -> the latent ``z: (1, D) float32`` they stand for."""
    return _grid(latent_bits)[1][torch.from_numpy(buckets.astype(np.int64))].unsqueeze(0)


def _as_input(model, pixels: np.ndarray) -> torch.Tensor:
    """One image's symbols ``(784,)`` -> the model's input ``(1, 1, 28, 28)``, made the same way on both sides."""
    image = pixels.astype(np.uint8).reshape(1, *IMAGE_SHAPE[1:])
    return data.to_tensor(image, max_value=1 if model.likelihood == "bernoulli" else 255)


def latent_mask(key: bytes, index: int, latent_dim: int, latent_bits: int) -> np.ndarray:
    """Pseudo-random offsets ``(latent_dim,) int32`` in ``0..2**latent_bits - 1`` for image ``index``: added to
    the bucket indices before they are pushed with the uniform prior, so that the next pop reads uniform bits."""
    prefix = b"vae_utils.codec latent mask\0" + key + index.to_bytes(4, "little")
    blocks = (hashlib.sha256(prefix + j.to_bytes(4, "little")).digest() for j in range(-(-latent_dim // 16)))
    return np.frombuffer(b"".join(blocks), dtype="<u2")[:latent_dim].astype(np.int32) % (1 << latent_bits)


@torch.no_grad()
def push_image(
    coder, model, pixels: np.ndarray, latent_bits: int, mask: np.ndarray | int = 0
) -> int:
    """Bits-back: push one image ``(784,) int32`` onto the ANS ``coder``; returns the
    stack's low-water mark.

    Pop z ~ q(z | x) (borrowing bits), push x with p(x | z), push z with the uniform
    prior over the buckets (as ``(bucket + mask) % 2**latent_bits``: see *whitened
    latents* above; ``mask=0`` is plain BB-ANS). The returned ``coder.num_words()``
    after the pop is the lowest the stack went.
    """
    n = 2**latent_bits
    mu, logvar = model.encode(_as_input(model, pixels))
    buckets = _pop_posterior(coder, *posterior_bucket_probs(mu, logvar, latent_bits))
    low = coder.num_words()
    params = model.decode(_bucket_centres(buckets, latent_bits))
    family, probs = _likelihood_model(model, params)
    coder.encode_reverse(pixels, family, probs)
    coder.encode_reverse(((buckets + mask) % n).astype(np.int32), _MODELS.Uniform(n))
    return low


@torch.no_grad()
def pop_image(
    coder, model, latent_bits: int, mask: np.ndarray | int = 0, floor_words: int = 0
) -> np.ndarray:
    """The exact inverse of :func:`push_image` (same ``mask``): pop z with the prior,
    pop x with p(x | z), push z back with q(z | x). Returns the image's symbols
    ``(784,) int32``. Raises :class:`CodecError` if the stack falls below
    ``floor_words``, the low-water mark of the encoder (a corrupted stream)."""
    n = 2**latent_bits
    buckets = coder.decode(_MODELS.Uniform(n), model.latent_dim)
    buckets = ((buckets - mask) % n).astype(np.int32)
    params = model.decode(_bucket_centres(buckets, latent_bits))
    family, probs = _likelihood_model(model, params)
    pixels = coder.decode(family, probs)
    if coder.num_words() < floor_words:
        raise CodecError(
            "the stream ran out of bits before the last image: the file is corrupted"
        )
    mu, logvar = model.encode(_as_input(model, pixels))
    _push_posterior(coder, buckets, *posterior_bucket_probs(mu, logvar, latent_bits))
    return pixels


def _compress_lossless(model, images: np.ndarray, latent_bits: int, mid: bytes, progress: bool) -> Compressed:
    start = time.perf_counter()
    mode = "lossless-binary" if model.likelihood == "bernoulli" else "lossless-8bit"
    header = Header(mode, mid, len(images), latent_bits=latent_bits, seed_words=model.latent_dim + 8)
    key = header.seed_key()
    seed = initial_words(key, header.seed_words)
    coder, symbols = _ANS(seed.copy()), images.reshape(len(images), -1).astype(np.int32)
    levels, low = [coder.num_valid_bits()], coder.num_words()
    with _one_thread():
        for i in _bar(len(images), progress, "bits-back encode"):
            mask = latent_mask(key, i, model.latent_dim, latent_bits)
            low = min(low, push_image(coder, model, symbols[i], latent_bits, mask))
            levels.append(coder.num_valid_bits())
    words = coder.get_compressed()
    stripped = max(low - 2, 0)  # the state holds at most 2 words; the bulk below the low-water mark is the seed's
    if low < 3 or not np.array_equal(words[:stripped], seed[:stripped]):
        raise RuntimeError(f"bits-back coding ran out of initial bits (low-water mark {low} words); please report this")
    header = dataclasses.replace(header, stripped_words=stripped)
    net_bits = np.diff(np.asarray(levels, dtype=np.float64))
    blob = _finish(header, words[stripped:])
    initial = 32.0 * (len(words) - stripped) - net_bits.sum()
    return Compressed(blob, read_header(blob), net_bits, float(initial), time.perf_counter() - start)


def _decode_lossless(model, header: Header, payload: np.ndarray, progress: bool) -> np.ndarray:
    key = header.seed_key()
    seed = initial_words(key, header.seed_words)
    floor = header.stripped_words + 2
    coder = _ANS(np.concatenate([seed[: header.stripped_words], payload]))
    images = np.empty((header.n_images, header.height * header.width), dtype=np.uint8)
    with _one_thread():
        for i in _bar(header.n_images, progress, "bits-back decode", backwards=True):
            mask = latent_mask(key, i, model.latent_dim, header.latent_bits)
            images[i] = pop_image(coder, model, header.latent_bits, mask, floor)
    if not np.array_equal(coder.get_compressed(), seed):
        raise CodecError(
            "the stream does not end in its initial bits: the file is corrupted (or its header was edited)"
        )
    return images.reshape(header.n_images, header.height, header.width)
