"""The lossy codec: the encoder means quantized with a step, coded under the prior's mass of each bin; the
decoder's mean at the quantized latents is the reconstruction."""

from __future__ import annotations

import time

import numpy as np
import torch

from vae_utils.codec.bitsback import _as_input
from vae_utils.codec.format import (
    _ANS,
    _MODELS,
    LOSSY_CHECK_WORDS,
    CodecError,
    Compressed,
    Header,
    _bar,
    _check_images,
    _check_model,
    _check_step,
    _finish,
    _one_thread,
    _symbol_range,
    initial_words,
    read_header,
)
from vae_utils.elbo import likelihood_mean
from vae_utils.model import IMAGE_SHAPE


def _lossy_model(header: Header):
    return _MODELS.QuantizedGaussian(-header.symbol_range, header.symbol_range, 0.0, 1.0 / header.step)


@torch.no_grad()
def lossy_symbols(model, images: np.ndarray, step: float, progress: bool = False) -> np.ndarray:
    """``round(mu / step)`` of every image, clamped to ``-R..R``, ``R = ceil(8 / step)``: ``(N, D) int32``."""
    model, step = _check_model(model), _check_step(step)
    images, r = _check_images(model, images), _symbol_range(step)
    flat = images.reshape(len(images), -1)
    out = np.empty((len(images), model.latent_dim), dtype=np.int32)
    with _one_thread():
        for i in _bar(len(images), progress, "lossy encode"):
            mu = model.encode(_as_input(model, flat[i]))[0].double()
            if not torch.isfinite(mu).all():
                raise ValueError("the model's encoder returned a non-finite mu; its weights are broken")
            out[i] = (mu / step).round().clamp(-r, r).numpy()[0]
    return out


@torch.no_grad()
def lossy_reconstruct(model, symbols: np.ndarray, step: float, progress: bool = False) -> np.ndarray:
    """The decoder's mean at ``z = symbols * step``, as ``uint8`` images ``(N, 28, 28)``, ``round(255 * mean)``."""
    out = np.empty((len(symbols), *IMAGE_SHAPE[1:]), dtype=np.uint8)
    with _one_thread():
        for i in _bar(len(symbols), progress, "lossy decode"):
            z = torch.from_numpy(symbols[i : i + 1].astype(np.float64) * step).float()
            mean = likelihood_mean(model.likelihood, model.decode(z))
            out[i] = (255 * mean.double()).round().clamp(0, 255).numpy().astype(np.uint8)[0, 0]
    return out


def _compress_lossy(model, images: np.ndarray, step: float, mid: bytes, progress: bool) -> Compressed:
    start = time.perf_counter()
    header = Header("lossy", mid, len(images), step=step, symbol_range=_symbol_range(step))
    symbols = lossy_symbols(model, images, step, progress)
    seed = initial_words(header.seed_key(), LOSSY_CHECK_WORDS)
    coder, family = _ANS(seed.copy()), _lossy_model(header)
    net_bits = np.empty(len(images))
    for i in reversed(range(len(images))):  # a stack: push the last image first, so the first pops first
        before = coder.num_valid_bits()
        coder.encode_reverse(symbols[i], family)
        net_bits[i] = coder.num_valid_bits() - before
    words = coder.get_compressed()
    blob = _finish(header, words)
    initial = 32.0 * len(words) - net_bits.sum()
    return Compressed(blob, read_header(blob), net_bits, float(initial), time.perf_counter() - start)


def _decode_lossy(model, header: Header, payload: np.ndarray, progress: bool) -> np.ndarray:
    seed = initial_words(header.seed_key(), LOSSY_CHECK_WORDS)
    coder, family = _ANS(payload), _lossy_model(header)
    symbols = np.empty((header.n_images, model.latent_dim), dtype=np.int32)
    for i in range(header.n_images):
        symbols[i] = coder.decode(family, model.latent_dim)
        if coder.num_words() < LOSSY_CHECK_WORDS:
            raise CodecError("the stream ran out of bits before the last image: the file is corrupted")
    if not np.array_equal(coder.get_compressed(), seed):
        raise CodecError("the stream does not end in its check words: the file is corrupted (or its header was edited)")
    return lossy_reconstruct(model, symbols, header.step, progress)
