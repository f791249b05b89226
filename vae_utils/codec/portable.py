"""Files that decode the same on every machine: the codec with an integer model (``arithmetic="integer"``,
built by :func:`vae_utils.shrink.integer_model`), in lanes.

The integer model's results do not depend on the batch, so the networks run on many images per call. Bits-back
pops are sequential on one stack, so the images are spread over ``lanes`` ANS stacks (as craystack does), lane
``j`` holding a contiguous run of images; one step codes the next image of every lane, with one encoder call and
one decoder call for all of them. Each lane starts from its own initial words and pays its own initial bits.

The model protocol the codec uses (no import of :mod:`vae_utils.shrink` here): ``posterior(pixels)`` ->
integer ``(mu, logvar)``; ``posterior_mean(pixels)``; ``likelihood_probs(z)`` and ``mean_images(z)`` for integer
latents; the latent grid and the posterior windows come from the model's module as ``model.latent_grid_int``
and ``model.posterior_windows``. Every probability handed to constriction is an integer over a power of two.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from vae_utils.codec.bitsback import latent_mask
from vae_utils.codec.format import (
    _ANS,
    _MODELS,
    LOSSY_CHECK_WORDS,
    MAX_LANES,
    CodecError,
    Compressed,
    Header,
    _bar,
    _finish,
    _symbol_range,
    initial_words,
    read_header,
)

DEFAULT_LANES = 16
IMAGES_PER_LANE = 500
"""``lanes="auto"`` gives each lane at least this many images, so the lanes' initial bits stay a small share."""
LOSSY_BATCH = 256
_WINDOW_BITS = 40  # posterior masses and lossy prior masses are integers over 2**40


def lane_bounds(n_images: int, lanes: int) -> np.ndarray:
    """``(lanes + 1,)``: lane ``j`` codes images ``bounds[j] .. bounds[j + 1] - 1`` (sizes differ by at most 1)."""
    return np.array([j * n_images // lanes for j in range(lanes + 1)])


def auto_lanes(n_images: int) -> int:
    return max(1, min(DEFAULT_LANES, n_images // IMAGES_PER_LANE))


def _lane_seed(key: bytes, lane: int, words: int) -> np.ndarray:
    return initial_words(key + lane.to_bytes(2, "little"), words)


def _windows(model, pixels: np.ndarray, latent_bits: int) -> list[list[tuple[int, np.ndarray]]]:
    """q(z | x) of each image: per dimension, the window's first bucket and its exact probabilities."""
    mu, logvar = model.posterior(pixels)
    starts, masses = model.posterior_windows(mu, logvar, latent_bits)
    rows = [(int(s), m / 2.0**_WINDOW_BITS) for s, m in zip(starts, masses)]  # integers over 2**40: exact
    d = model.latent_dim
    return [rows[i * d : (i + 1) * d] for i in range(len(pixels))]


def _pop_posterior(coder, windows: list[tuple[int, np.ndarray]]) -> np.ndarray:
    return np.array([start + coder.decode(_MODELS.Categorical(p, perfect=False)) for start, p in windows],
                    dtype=np.int32)  # fmt: skip


def _push_posterior(coder, buckets: np.ndarray, windows: list[tuple[int, np.ndarray]]) -> None:
    for bucket, (start, p) in reversed(list(zip(buckets, windows))):
        coder.encode_reverse(int(bucket - start), _MODELS.Categorical(p, perfect=False))


def _family(model):
    return _MODELS.Bernoulli(perfect=False) if model.likelihood == "bernoulli" else _MODELS.Categorical(perfect=False)


def compress_lossless(model, images: np.ndarray, latent_bits: int, lanes: int, mid: bytes, progress: bool) -> Compressed:
    start = time.perf_counter()
    n, d, size = len(images), model.latent_dim, 2**latent_bits
    lanes = min(lanes, n, MAX_LANES)
    mode = "lossless-binary" if model.likelihood == "bernoulli" else "lossless-8bit"
    header = Header(mode, mid, n, latent_bits=latent_bits, seed_words=d + 8, version=2, arithmetic="integer",
                    lane_stripped=(0,) * lanes, lane_words=(0,) * lanes)  # fmt: skip
    key, bounds = header.seed_key(), lane_bounds(n, lanes)
    seeds = [_lane_seed(key, j, header.seed_words) for j in range(lanes)]
    coders = [_ANS(seed.copy()) for seed in seeds]
    lows = [c.num_words() for c in coders]
    symbols = images.reshape(n, -1).astype(np.int32)
    centres = model.latent_grid_int(latent_bits)[1]
    family, net_bits = _family(model), np.zeros(n)
    for step in _bar(int(np.diff(bounds).max()), progress, "bits-back encode (integer)"):
        active = [j for j in range(lanes) if bounds[j] + step < bounds[j + 1]]
        index = np.array([bounds[j] + step for j in active])
        windows = _windows(model, symbols[index], latent_bits)
        buckets = np.empty((len(active), d), dtype=np.int32)
        before = [coders[j].num_valid_bits() for j in active]
        for b, j in enumerate(active):
            buckets[b] = _pop_posterior(coders[j], windows[b])
            lows[j] = min(lows[j], coders[j].num_words())
        probs = model.likelihood_probs(centres[torch.from_numpy(buckets.astype(np.int64))])
        for b, j in enumerate(active):
            mask = latent_mask(key, int(index[b]), d, latent_bits)
            coders[j].encode_reverse(symbols[index[b]], family, probs[b])
            coders[j].encode_reverse(((buckets[b] + mask) % size).astype(np.int32), _MODELS.Uniform(size))
            net_bits[index[b]] = coders[j].num_valid_bits() - before[b]
    words, stripped = [], []
    for j, coder in enumerate(coders):
        lane = coder.get_compressed()
        cut = max(lows[j] - 2, 0)
        if lows[j] < 3 or not np.array_equal(lane[:cut], seeds[j][:cut]):
            raise RuntimeError(f"bits-back coding ran out of initial bits in lane {j}; please report this")
        words.append(lane[cut:])
        stripped.append(cut)
    header = dataclasses.replace(header, lane_stripped=tuple(stripped), lane_words=tuple(len(w) for w in words))
    blob = _finish(header, np.concatenate(words))
    initial = 32.0 * sum(len(w) for w in words) - net_bits.sum()
    return Compressed(blob, read_header(blob), net_bits, float(initial), time.perf_counter() - start)


def decode_lossless(model, header: Header, payload: np.ndarray, progress: bool) -> np.ndarray:
    n, d, size, lanes = header.n_images, model.latent_dim, 2**header.latent_bits, header.lanes
    key, bounds = header.seed_key(), lane_bounds(n, lanes)
    seeds = [_lane_seed(key, j, header.seed_words) for j in range(lanes)]
    offsets = np.cumsum((0, *header.lane_words))
    coders = [_ANS(np.concatenate([seeds[j][: header.lane_stripped[j]], payload[offsets[j] : offsets[j + 1]]]))
              for j in range(lanes)]  # fmt: skip
    centres = model.latent_grid_int(header.latent_bits)[1]
    family = _family(model)
    images = np.empty((n, header.height * header.width), dtype=np.uint8)
    for step in _bar(int(np.diff(bounds).max()), progress, "bits-back decode (integer)", backwards=True):
        active = [j for j in range(lanes) if bounds[j] + step < bounds[j + 1]]
        index = np.array([bounds[j] + step for j in active])
        buckets = np.empty((len(active), d), dtype=np.int32)
        for b, j in enumerate(active):
            mask = latent_mask(key, int(index[b]), d, header.latent_bits)
            buckets[b] = (coders[j].decode(_MODELS.Uniform(size), d) - mask) % size
        probs = model.likelihood_probs(centres[torch.from_numpy(buckets.astype(np.int64))])
        pixels = np.empty((len(active), header.height * header.width), dtype=np.int32)
        for b, j in enumerate(active):
            pixels[b] = coders[j].decode(family, probs[b])
            if coders[j].num_words() < header.lane_stripped[j] + 2:
                raise CodecError("the stream ran out of bits before the last image: the file is corrupted")
        windows = _windows(model, pixels, header.latent_bits)
        for b, j in enumerate(active):
            _push_posterior(coders[j], buckets[b], windows[b])
        images[index] = pixels
    for j, coder in enumerate(coders):
        if not np.array_equal(coder.get_compressed(), seeds[j]):
            raise CodecError(
                f"lane {j} does not end in its initial bits: the file is corrupted (or its header was edited)"
            )
    return images.reshape(n, header.height, header.width)


# ------------------------------------------------------------------------------------------------------ lossy


def _lossy_prior(model, header: Header):
    """The prior's mass of each bin ``[(s - 1/2) step, (s + 1/2) step]``, s = -R..R, from the integer normal CDF:
    a Categorical over 2R + 1 symbols whose probabilities are integers over 2**40."""
    r = header.symbol_range
    edges = np.rint((np.arange(-r, r + 2) - 0.5) * (header.step * 2.0**16)).astype(np.int64)  # IEEE: exact rule
    cdf = model.normal_cdf(torch.from_numpy(edges))
    cdf[0], cdf[-1] = 0, 1 << _WINDOW_BITS
    return _MODELS.Categorical((cdf[1:] - cdf[:-1]).double().numpy() / 2.0**_WINDOW_BITS, perfect=False)


def lossy_latents(symbols: np.ndarray, step: float) -> torch.Tensor:
    """Symbols ``(N, D)`` -> the integer latents ``round(s * step * 2**16)`` the integer decoder takes."""
    return torch.from_numpy(np.rint(symbols.astype(np.float64) * (step * 2.0**16)).astype(np.int64))


def compress_lossy(model, images: np.ndarray, step: float, mid: bytes, progress: bool) -> Compressed:
    start = time.perf_counter()
    header = Header("lossy", mid, len(images), step=step, symbol_range=_symbol_range(step), version=2,
                    arithmetic="integer")  # fmt: skip
    r, flat = header.symbol_range, images.reshape(len(images), -1)
    symbols = np.concatenate([np.clip(np.rint(model.posterior_mean(flat[i : i + LOSSY_BATCH]) / step), -r, r)
                              for i in range(0, len(flat), LOSSY_BATCH)]).astype(np.int32)  # fmt: skip
    seed = initial_words(header.seed_key(), LOSSY_CHECK_WORDS)
    coder, prior = _ANS(seed.copy()), _lossy_prior(model, header)
    net_bits = np.empty(len(images))
    for i in reversed(range(len(images))):
        before = coder.num_valid_bits()
        coder.encode_reverse(symbols[i] + r, prior)
        net_bits[i] = coder.num_valid_bits() - before
    words = coder.get_compressed()
    blob = _finish(header, words)
    return Compressed(blob, read_header(blob), net_bits, float(32.0 * len(words) - net_bits.sum()),
                      time.perf_counter() - start)  # fmt: skip


def decode_lossy(model, header: Header, payload: np.ndarray, progress: bool) -> np.ndarray:
    seed = initial_words(header.seed_key(), LOSSY_CHECK_WORDS)
    coder, prior = _ANS(payload), _lossy_prior(model, header)
    symbols = np.empty((header.n_images, model.latent_dim), dtype=np.int32)
    for i in range(header.n_images):
        symbols[i] = coder.decode(prior, model.latent_dim) - header.symbol_range
        if coder.num_words() < LOSSY_CHECK_WORDS:
            raise CodecError("the stream ran out of bits before the last image: the file is corrupted")
    if not np.array_equal(coder.get_compressed(), seed):
        raise CodecError("the stream does not end in its check words: the file is corrupted (or its header was edited)")
    z = lossy_latents(symbols, header.step)
    return np.concatenate([model.mean_images(z[i : i + LOSSY_BATCH]) for i in range(0, len(z), LOSSY_BATCH)])
