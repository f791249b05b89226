"""Real bitstreams from a VAE: lossless bits-back coding, a lossy codec of quantized latents, the ``.vae`` file
format and ``python -m vae_utils.codec`` (Chapter 6).

**Lossless (bits-back with ANS, Townsend et al. 2019).** Each latent dimension is cut into ``2**latent_bits``
buckets of equal mass under the N(0, 1) prior (:func:`latent_grid`), so p(z) is uniform over the buckets:
exactly ``latent_bits`` bits per dimension. q(z | x) over the same buckets is the posterior Gaussian's mass in
each (:func:`posterior_bucket_probs`). To push one image (:func:`push_image`): *pop* a bucket per dimension
with q(z | x) (this reads bits already on the stack), push x with p(x | z) (Bernoulli per pixel, or the
256-level pmf of the discretized logistic mixture), push z with p(z). Popping an image (:func:`pop_image`) runs
the same steps backwards and puts q's bits back. Net cost per image: -log p(x | z) - log p(z) + log q(z | x),
the (discretized) -ELBO. All images of a file share one stream.

Two details keep the real rate at the -ELBO:

- *Whitened latents.* The bits the next image pops are those of the z just pushed, and z ~ q(z | x) is not
  uniform over the buckets unless the aggregate posterior is the prior: popping from them draws z biased
  towards the previous image's posterior. (A small ConvVAE trained for 100 steps then codes 1.8% above its
  -ELBO.) So each bucket index is pushed plus a pseudo-random offset modulo ``2**latent_bits``
  (:func:`latent_mask`, known to both sides): still exactly ``latent_bits`` bits under the uniform prior, and
  uniform bits for the next pop (the same model: -0.1%, within the noise).
- *Windowed posteriors.* constriction gives every entry of a probability table at least 2**-24, so a table
  over all ``2**latent_bits`` buckets leaks mass into the far tails of a narrow q, and a z drawn there costs
  many bits. q is coded over the buckets within :data:`WINDOW_SIGMAS` standard deviations of its mean.
  (Without the window, the book's binarized VAE codes 2.8% above its -ELBO at 16 bits.)

*Initial bits.* The first pop needs bits on the stack. The coder starts from ``latent_dim + 8`` pseudo-random
32-bit words that both sides derive from the header (sha256 of its fields, so the final state also checks the
header against the payload). The bottom words of that seed are never touched; they are left out of the file
(``stripped`` words) and the decoder puts them back. What remains, the bits the first image borrowed and could
not return, is :attr:`Compressed.initial_bits`: paid once per file, so it amortizes over the images
(:attr:`Compressed.bits_per_image_first_n`). Decoding must end in exactly the seed, or the file is rejected.

**Lossy.** ``s = round(mu / step)`` per latent dimension (clamped to ``-R..R``, ``R = ceil(8 / step)``), coded
under the prior mass of each bin ``[(s - 1/2) step, (s + 1/2) step]`` (constriction's ``QuantizedGaussian``
with mean 0 and std ``1 / step``); the decoder's mean E[x | z = s * step] is the reconstruction, as ``uint8``
``round(255 * mean)`` (for a Bernoulli model: the grey-level probability image). Larger steps, fewer bytes,
lower PSNR: :func:`rate_distortion`. The stream starts from 2 check words, which decoding must restore.

**Determinism.** Encoder and decoder must compute bit-identical probabilities. Every model call sees one image
(batch composition changes float results), on the CPU, in float32, with one torch thread (the thread count
can change the order of float sums), and probabilities go to constriction as float64. A lossless file is
therefore only guaranteed to decode on the same kind of machine with the same torch, numpy and constriction
versions; a lossy file always decodes to the same latents, though a reconstruction may differ by a grey level.

**Model identity.** :func:`model_id`: sha256 over the model class, its config and every ``state_dict`` tensor
(name, dtype, shape, bytes) in sorted order; the header stores the first 16 bytes. Weights, not checkpoint
bytes: the same weights saved twice (other metadata, another torch) keep their id.

**File format, version 1** (integers little-endian):

======  =====  ===========================================================================================
offset  bytes  field
======  =====  ===========================================================================================
0       4      magic ``b"VAEC"``
4       1      format version (1)
5       1      mode: 0 lossless-binary, 1 lossless-8bit, 2 lossy
6       16     model id (first 16 bytes of :func:`model_id`)
22      4      image count N (u32), 1 .. :data:`MAX_IMAGES`
26      2      height (u16), 28
28      2      width (u16), 28
30      12     lossless: latent_bits (u8), 3 zero bytes, seed words (u32), stripped seed words (u32);
               lossy: step (f64), symbol range R (u32)
42      4      payload length P in bytes (u32, a multiple of 4)
46      P      payload: the ANS stack as u32 words, bottom first
46+P    4      CRC-32 (zlib) of bytes 0 .. 46+P-1
======  =====  ===========================================================================================

:func:`read_header` checks magic, version, lengths and the CRC before anything else runs, and every failure,
including one inside constriction or numpy, is a :class:`CodecError` (a ``ValueError``). The image count is
capped at :data:`MAX_IMAGES` and the payload must be exactly the bytes present, so a hostile header cannot
make the reader allocate more than ~80 MB. Decoding checks the stack never drops below the level the encoder
reached and must end in exactly the initial words.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import struct
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import constriction
import numpy as np
import torch
from tqdm.auto import tqdm

from vae_utils import data
from vae_utils.elbo import bernoulli_mean, discretized_logistic_mixture_probs, likelihood_mean
from vae_utils.evaluate import psnr
from vae_utils.model import IMAGE_SHAPE, CheckpointError, load_checkpoint

MAGIC = b"VAEC"
FORMAT_VERSION = 1
MODES = ("lossless-binary", "lossless-8bit", "lossy")
"""The modes a file records; :func:`compress` takes ``mode="lossless"`` or ``"lossy"`` and picks the first two
from the model's likelihood."""
DEFAULT_LATENT_BITS = 12
"""2**12 buckets per latent dimension. Measured with an earlier binarized ConvVAE (one encoder dense layer, 100
epochs) on 500 test images: the real rate is within 0.4% of the -ELBO (the noise of one z per image) for 8 to
16 bits; the bucketing itself, z at a bucket's centre instead of anywhere, costs +0.2% at 6 bits, +0.01% at 8
and < 0.005% from 10 on. 12 leaves a margin for narrower posteriors; more bits cost more initial bits and time
(16 bits: ~15 images/s)."""
LATENT_BITS_RANGE = (4, 16)
WINDOW_SIGMAS = 6.0
"""q(z | x) is coded over the buckets within this many posterior standard deviations of its mean (mass outside
~2e-9)."""
DEFAULT_STEP = 0.5
STEP_RANGE = (1e-3, 8.0)
MAX_IMAGES = 100_000
"""At most this many images in one file: decoding allocates at most MAX_IMAGES * 784 bytes of pixels."""
MAX_SEED_WORDS = 1 << 16
LOSSY_CHECK_WORDS = 2
PROGRESS_THRESHOLD = 100
"""The CLI shows a progress bar for more images than this."""
CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_CHECKPOINTS = {
    "binarized": CHECKPOINTS / "conv_binarized" / "best.pt",
    "8bit": CHECKPOINTS / "conv_8bit" / "best.pt",
}

_HEADER = struct.Struct("<4sBB16sIHH12sI")
_LOSSLESS_PARAMS = struct.Struct("<B3xII")
_LOSSY_PARAMS = struct.Struct("<dI")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size
_ANS = constriction.stream.stack.AnsCoder
_MODELS = constriction.stream.model


class CodecError(ValueError):
    """A file (or stream) that this codec cannot decode: not a codec file, another format version, truncated,
    corrupted, or written with another model."""


# ----------------------------------------------------------------------------------------------------- checks


def _check_model(model: object) -> torch.nn.Module:
    missing = [
        name for name in ("encode", "decode", "likelihood", "latent_dim", "state_dict") if not hasattr(model, name)
    ]
    if missing:
        raise TypeError(f"model must be a vae_utils VAE (ConvVAE or FCVAE); {type(model).__name__} lacks {missing}")
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        raise ValueError(
            f"the codec runs the model on the CPU in float32 (so that encoder and decoder agree bit for bit), got "
            f"{p.dtype} on {p.device}; use model.float().cpu()"
        )
    return model


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")
    return int(value)


def _check_step(step: object) -> float:
    low, high = STEP_RANGE
    if isinstance(step, bool) or not isinstance(step, (int, float, np.floating)) or not low <= step <= high:
        raise ValueError(
            f"step must be a number in [{low}, {high}] (the quantization step of the latents), got {step!r}"
        )
    return float(step)


def _check_images(model, images: object) -> np.ndarray:
    """``(N, 28, 28) uint8`` in the model's alphabet: 0/1 for a Bernoulli model, 0..255 for the mixture."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        seen = f"{images.dtype} array" if isinstance(images, np.ndarray) else type(images).__name__
        raise TypeError(f"images must be a uint8 numpy array of shape (N, 28, 28), got {seen}")
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[1:]:
        raise ValueError(
            f"images must have shape (N, 28, 28), got {images.shape}; resize to 28x28 grayscale, e.g. "
            "Image.open(p).convert('L').resize((28, 28))"
        )
    if not 1 <= len(images) <= MAX_IMAGES:
        raise ValueError(f"one file holds 1..{MAX_IMAGES} images, got {len(images)}; split them into several files")
    if model.likelihood == "bernoulli" and images.max() > 1:
        raise ValueError(
            f"this model's likelihood is bernoulli: it codes binary images (pixels 0 or 1), but these hold values up "
            f"to {images.max()}. Binarize them (vae_utils.data.binarize_stochastic or binarize_threshold) or use "
            "a model with the logistic_mixture likelihood"
        )
    return np.ascontiguousarray(images)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread (and restore the setting): results then cannot depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ model id


def model_id(model) -> bytes:
    """sha256 (32 bytes) of the model class, its config and its weights; a file stores the first 16 bytes."""
    model = _check_model(model)
    digest = hashlib.sha256(b"vae_utils.codec model id\0")
    config = getattr(model, "config", {})
    digest.update(f"{type(model).__name__}\0{json.dumps(config, sort_keys=True)}\0".encode())
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes())  # native byte order: little-endian on every machine torch supports
    return digest.digest()


# ------------------------------------------------------------------------------------------------ the header


@dataclasses.dataclass(frozen=True)
class Header:
    """The fields of a ``.vae`` file (see the module docstring); ``read_header`` returns one checked."""

    mode: str
    model_id: bytes
    n_images: int
    height: int = IMAGE_SHAPE[1]
    width: int = IMAGE_SHAPE[2]
    latent_bits: int = 0  # lossless: 2**latent_bits buckets per latent dimension
    seed_words: int = 0  # lossless: the initial words the coder starts from
    stripped_words: int = 0  # lossless: bottom seed words never touched, left out of the payload
    step: float = 0.0  # lossy: quantization step of the latents
    symbol_range: int = 0  # lossy: symbols lie in -symbol_range..symbol_range
    payload_bytes: int = 0
    version: int = FORMAT_VERSION

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + self.payload_bytes + _CRC.size

    @property
    def dims(self) -> int:
        """Pixels in all images: the denominator of bits/dim."""
        return self.n_images * self.height * self.width

    @property
    def bits_per_dim(self) -> float:
        """The whole file's bits per pixel."""
        return 8 * self.file_bytes / self.dims

    @property
    def payload_bits_per_dim(self) -> float:
        return 8 * self.payload_bytes / self.dims

    def _params(self) -> bytes:
        if self.mode == "lossy":
            return _LOSSY_PARAMS.pack(self.step, self.symbol_range)
        return _LOSSLESS_PARAMS.pack(self.latent_bits, self.seed_words, self.stripped_words)

    def pack(self) -> bytes:
        """The 46 header bytes."""
        return _HEADER.pack(MAGIC, self.version, MODES.index(self.mode), self.model_id[:16], self.n_images,
                            self.height, self.width, self._params(), self.payload_bytes)  # fmt: skip

    def seed_key(self) -> bytes:
        """The header fields the initial words are derived from: all but the stripped count and payload length."""
        fields = dataclasses.replace(self, stripped_words=0, payload_bytes=0)
        return fields.pack()

    def describe(self) -> dict:
        """A JSON-ready summary, as ``python -m vae_utils.codec info`` prints it."""
        out = {"mode": self.mode, "format_version": self.version, "model_id": self.model_id[:16].hex(),
               "n_images": self.n_images, "shape": [self.height, self.width]}  # fmt: skip
        if self.mode == "lossy":
            out.update(step=self.step, symbol_range=self.symbol_range)
        else:
            out.update(latent_bits=self.latent_bits, seed_words=self.seed_words, stripped_words=self.stripped_words)
        out.update(file_bytes=self.file_bytes, payload_bytes=self.payload_bytes, bits_per_dim=self.bits_per_dim,
                   payload_bits_per_dim=self.payload_bits_per_dim)  # fmt: skip
        return out


def _symbol_range(step: float) -> int:
    return math.ceil(8 / step)


def _truncated(n: int, needed: int, what: str) -> CodecError:
    return CodecError(f"the file is truncated: it has {n} bytes, but {what} needs {needed}")


def read_header(blob: bytes) -> Header:
    """Check a whole ``.vae`` file (magic, version, lengths, CRC-32, field ranges) and return its header.

    Raises :class:`CodecError` for anything that is not an intact version-1 file; reads no model.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the file's bytes (bytes, bytearray or memoryview), got {type(blob).__name__}")
    blob = bytes(blob)
    n = len(blob)
    if n == 0:
        raise CodecError("the file is empty")
    if blob[:4] != MAGIC[: min(n, 4)]:
        raise CodecError(f"not a vae_utils codec file: it starts with {blob[:4]!r}, expected {MAGIC!r}")
    if n < 5:
        raise _truncated(n, 5, "the magic and version")
    if blob[4] != FORMAT_VERSION:
        raise CodecError(
            f"format version {blob[4]}, but this vae_utils reads version {FORMAT_VERSION}: the file was written by "
            "another vae_utils version (use that one), or it is corrupted"
        )
    if n < HEADER_BYTES + _CRC.size:
        raise _truncated(n, HEADER_BYTES + _CRC.size, "the header and checksum")
    _, version, mode, mid, count, height, width, params, payload_bytes = _HEADER.unpack_from(blob)
    expected = HEADER_BYTES + payload_bytes + _CRC.size
    if n < expected:
        raise _truncated(n, expected, f"a {payload_bytes}-byte payload as its header says,")
    if n > expected:
        raise CodecError(f"the file has {n - expected} bytes after its end ({expected} bytes per its header)")
    stored, computed = _CRC.unpack_from(blob, n - _CRC.size)[0], zlib.crc32(blob[: n - _CRC.size])
    if stored != computed:
        raise CodecError(
            f"checksum mismatch (stored CRC-32 {stored:08x}, computed {computed:08x}): the file is corrupted"
        )
    # From here on the bytes are as written; the checks below guard against a crafted (hostile) header.
    if mode >= len(MODES):
        raise CodecError(f"unknown mode {mode}; version {FORMAT_VERSION} knows {dict(enumerate(MODES))}")
    if not 1 <= count <= MAX_IMAGES:
        raise CodecError(f"the header says {count} images; a file holds 1..{MAX_IMAGES}")
    if (height, width) != IMAGE_SHAPE[1:]:
        raise CodecError(f"the header says {height}x{width} images; the codec's models make 28x28")
    if payload_bytes == 0 or payload_bytes % 4:
        raise CodecError(f"the payload must be a positive whole number of 32-bit words, got {payload_bytes} bytes")
    fields = {"mode": MODES[mode], "model_id": mid, "n_images": count, "height": height, "width": width,
              "payload_bytes": payload_bytes, "version": version}  # fmt: skip
    if MODES[mode] == "lossy":
        step, symbol_range = _LOSSY_PARAMS.unpack(params)
        if not STEP_RANGE[0] <= step <= STEP_RANGE[1]:  # also rejects nan
            raise CodecError(f"the header's quantization step {step!r} is outside [{STEP_RANGE[0]}, {STEP_RANGE[1]}]")
        if symbol_range != _symbol_range(step):
            raise CodecError(f"the header's symbol range {symbol_range} is not ceil(8 / step) = {_symbol_range(step)}")
        return Header(**fields, step=step, symbol_range=symbol_range)
    if params[1:4] != b"\0\0\0":
        raise CodecError("the header's reserved bytes are not zero")
    latent_bits, seed_words, stripped = _LOSSLESS_PARAMS.unpack(params)
    low, high = LATENT_BITS_RANGE
    if not low <= latent_bits <= high:
        raise CodecError(f"the header's latent_bits {latent_bits} is outside {low}..{high}")
    if not 2 <= seed_words <= MAX_SEED_WORDS or stripped > seed_words:
        raise CodecError(f"the header's seed words ({seed_words}, {stripped} stripped) are out of range")
    return Header(**fields, latent_bits=latent_bits, seed_words=seed_words, stripped_words=stripped)


def initial_words(key: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random uint32 words from sha256(key, counter): the same on every machine and numpy version."""
    blocks = (hashlib.sha256(b"vae_utils.codec initial bits\0" + key + i.to_bytes(4, "little")).digest()
              for i in range(-(-n // 8)))  # fmt: skip
    words = np.frombuffer(b"".join(blocks), dtype="<u4")[:n].astype(np.uint32)
    words[-1] |= 1  # an ANS stack never ends in a zero word
    return words


# --------------------------------------------------------------------------------------- bits-back, one image


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


# ------------------------------------------------------------------------------------------ compress a dataset


@dataclasses.dataclass(frozen=True)
class Compressed:
    """A compressed dataset: the file's bytes, its header and how the bits were spent.

    ``net_bits: (N,) float64`` is what each image added to the stream (lossless: -log p(x|z) - log p(z) +
    log q(z|x), measured on the real stack); ``initial_bits`` is the rest of the payload: the bits the first
    image borrowed from the initial words (lossless), or the check words (lossy), plus padding to whole words.
    """

    data: bytes
    header: Header
    net_bits: np.ndarray
    initial_bits: float
    seconds: float

    @property
    def n_images(self) -> int:
        return self.header.n_images

    @property
    def file_bytes(self) -> int:
        return len(self.data)

    @property
    def payload_bytes(self) -> int:
        return self.header.payload_bytes

    @property
    def bits_per_dim(self) -> float:
        """The whole file's bits per pixel."""
        return self.header.bits_per_dim

    @property
    def net_bits_per_dim(self) -> float:
        """The images' own cost in bits per pixel, without the initial bits and the header: compare with the -ELBO."""
        return float(self.net_bits.sum()) / self.header.dims

    @property
    def bits_per_image_first_n(self) -> np.ndarray:
        """``(N,)``: payload bits per image of a stream holding only the first n images, n = 1..N.

        The initial bits are paid once, so this falls like ``initial_bits / n`` towards the mean net cost.
        """
        return (self.initial_bits + np.cumsum(self.net_bits)) / np.arange(1, self.n_images + 1)

    def summary(self) -> dict:
        """A JSON-ready dict: header fields, bytes, bits/dim, initial bits, seconds."""
        return {**self.header.describe(), "net_bits_per_dim": self.net_bits_per_dim,
                "net_bits_per_image": float(self.net_bits.mean()), "initial_bits": self.initial_bits,
                "seconds": self.seconds, "images_per_second": self.n_images / max(self.seconds, 1e-9)}  # fmt: skip


def _finish(header: Header, words: np.ndarray) -> bytes:
    payload = words.astype("<u4").tobytes()
    head = dataclasses.replace(header, payload_bytes=len(payload)).pack()
    return head + payload + _CRC.pack(zlib.crc32(head + payload))


def _bar(n: int, progress: bool, desc: str, backwards: bool = False):
    return tqdm(reversed(range(n)) if backwards else range(n), total=n, desc=desc, leave=False,
                disable=not progress, unit="image")  # fmt: skip


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


def compress(
    model,
    images: np.ndarray,
    mode: str = "lossless",
    *,
    latent_bits: int = DEFAULT_LATENT_BITS,
    step: float = DEFAULT_STEP,
    progress: bool = False,
) -> Compressed:
    """Compress ``images: (N, 28, 28) uint8`` (0/1 for a Bernoulli model, 0..255 for the logistic mixture).

    ``mode="lossless"``: bits-back coding with ``2**latent_bits`` buckets per latent dimension;
    :func:`decompress` returns the images exactly. ``mode="lossy"``: the encoder means quantized with ``step``;
    :func:`decompress` returns the decoder's mean images. The result's ``.data`` is the file's bytes.
    """
    model = _check_model(model)
    if mode not in ("lossless", "lossy"):
        raise ValueError(f"mode must be 'lossless' or 'lossy', got {mode!r}")
    images = _check_images(model, images)
    mid = model_id(model)[:16]
    if mode == "lossy":
        return _compress_lossy(model, images, _check_step(step), mid, progress)
    return _compress_lossless(model, images, _check_int("latent_bits", latent_bits, *LATENT_BITS_RANGE), mid, progress)


# ---------------------------------------------------------------------------------------------- decompress


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


def decompress(model, blob: bytes, *, progress: bool = False) -> np.ndarray:
    """The images of a ``.vae`` file: ``(N, 28, 28) uint8``, 0/1 (lossless-binary), 0..255 (lossless-8bit) or
    the decoder's mean as grey levels (lossy). ``model`` must be the one that compressed them.

    Raises :class:`CodecError` for a file that is not intact or was written with another model.
    """
    header = read_header(blob)
    model = _check_model(model)
    mid = model_id(model)[:16]
    if mid != header.model_id:
        raise CodecError(
            f"the file was compressed with model {header.model_id.hex()}, but the given model is {mid.hex()}; "
            "decompress with the checkpoint that compressed it"
        )
    needed = {"lossless-binary": "bernoulli", "lossless-8bit": "logistic_mixture"}.get(header.mode, model.likelihood)
    if model.likelihood != needed:
        raise CodecError(f"a {header.mode} file needs a {needed} model, got {model.likelihood}")
    payload = np.frombuffer(blob, dtype="<u4", offset=HEADER_BYTES, count=header.payload_bytes // 4).astype(np.uint32)
    try:
        if header.mode == "lossy":
            return _decode_lossy(model, header, payload, progress)
        return _decode_lossless(model, header, payload, progress)
    except CodecError:
        raise
    except Exception as error:  # noqa: BLE001 - constriction rejects the stream, or garbage reached numpy/torch
        raise CodecError(
            f"the payload cannot be decoded ({type(error).__name__}: {error}): the file is corrupted"
        ) from None


# ---------------------------------------------------------------------------------------- rate and distortion


RD_STEPS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5)
"""The quantization steps :func:`rate_distortion` sweeps by default."""


def rate_distortion(model, images: np.ndarray, steps: Sequence[float] = RD_STEPS, progress: bool = False) -> list[dict]:
    """The lossy codec at each ``step``: real bytes (compress, then decompress) against PSNR.

    One dict per step: ``step``, ``file_bytes``, ``bytes_per_image`` (payload), ``bits_per_dim`` (payload) and
    ``psnr_db`` (mean over images, against the images in [0, 1]).
    """
    model = _check_model(model)
    images = _check_images(model, images)
    target = torch.from_numpy(images.astype(np.float64) / (1 if model.likelihood == "bernoulli" else 255))
    rows = []
    for step in tqdm(steps, desc="steps", leave=False, disable=not progress):
        result = compress(model, images, "lossy", step=step)
        recon = torch.from_numpy(decompress(model, result.data).astype(np.float64) / 255)
        rows.append({"step": float(step), "file_bytes": result.file_bytes,
                     "bytes_per_image": result.payload_bytes / len(images),
                     "bits_per_dim": result.header.payload_bits_per_dim,
                     "psnr_db": psnr(recon.unsqueeze(1), target.unsqueeze(1)).mean().item()})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------------- CLI


def _grey(image, path: Path) -> np.ndarray:
    """A PIL image -> ``(H, W) uint8``; colour only if every pixel is grey (R = G = B) and opaque."""
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"))
    if image.mode in ("P", "RGB", "RGBA", "LA", "PA"):
        rgba = np.asarray(image.convert("RGBA"))
        if (
            (rgba[..., 0] == rgba[..., 1]).all()
            and (rgba[..., 1] == rgba[..., 2]).all()
            and (rgba[..., 3] == 255).all()
        ):
            return np.ascontiguousarray(rgba[..., 0])
        raise ValueError(f"{path} is a colour (or transparent) {image.mode} image; the codec takes 8-bit grayscale. "
                         "Convert it first, e.g. Image.open(p).convert('L').save(q)")  # fmt: skip
    raise ValueError(f"{path} has PIL mode {image.mode}; the codec takes 8-bit grayscale (mode L). Convert it first, "
                     "e.g. Image.open(p).convert('L')")  # fmt: skip


def _size_error(path: Path, shape) -> ValueError:
    return ValueError(f"{path}: images must be 28x28 grayscale, got shape {tuple(shape)}; resize to 28x28 grayscale, "
                      "e.g. Image.open(p).convert('L').resize((28, 28))")  # fmt: skip


def _from_array(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE[1:]:
        raise _size_error(path, array.shape)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path} holds {array.dtype} values; the codec takes integer grey levels 0..255. If they "
                         "are in [0, 1], save (x * 255).round().astype(np.uint8)")  # fmt: skip
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{path} holds values from {array.min()} to {array.max()}; grey levels must be 0..255")
    return array.astype(np.uint8)


def load_images(paths: Sequence[str | Path], key: str | None = None) -> np.ndarray:
    """Images for the CLI: PNG (or other PIL) files, ``.npy`` arrays, ``.npz`` files -> ``(N, 28, 28) uint8``."""
    from PIL import Image

    parts = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            if path.suffix == ".npy":
                parts.append(_from_array(np.load(path, allow_pickle=False), path))
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as arrays:
                    names = list(arrays.keys())
                    if key is None and len(names) != 1:
                        listing = ", ".join(f"{n} {arrays[n].shape}" for n in names)
                        raise ValueError(f"{path} holds several arrays ({listing}); choose one with --key NAME")
                    name = key if key is not None else names[0]
                    if name not in names:
                        raise ValueError(f"{path} has no array {name!r}; it holds {names}")
                    parts.append(_from_array(arrays[name], path))
            else:
                with Image.open(path) as image:  # reads the header only: check the size before any pixels
                    if image.size != IMAGE_SHAPE[1:]:
                        raise _size_error(path, image.size[::-1])
                    parts.append(_grey(image, path)[None])
        except ValueError:
            raise
        except Exception as error:  # noqa: BLE001 - not an image, a damaged array file, a decompression bomb
            raise ValueError(
                f"cannot read {path} as a PNG or .npy/.npz array ({type(error).__name__}: {error})"
            ) from None
    if not parts:
        raise ValueError("no images given")
    return np.concatenate(parts)


def _kind_of(images: np.ndarray, kind: str) -> tuple[str, np.ndarray]:
    """``("binarized", 0/1 images)`` or ``("8bit", 0..255 images)``; "auto": binary iff all pixels are 0/1 or 0/255."""
    values = np.unique(images)
    binary01, binary255 = set(values.tolist()) <= {0, 1}, set(values.tolist()) <= {0, 255}
    if kind == "auto":
        kind = "binarized" if binary01 or binary255 else "8bit"
    if kind == "binarized":
        if not (binary01 or binary255):
            raise ValueError("--kind binarized needs binary images (every pixel 0/1 or 0/255); these are grey-level")
        return kind, (images > 0).astype(np.uint8)
    return kind, images


def _load_model(path: Path):
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; pass --checkpoint PATH (a best.pt written by python -m vae_utils.train)"
        )
    return load_checkpoint(path)[0]


def _find_checkpoint(wanted: bytes) -> Path:
    tried = []
    for path in sorted(CHECKPOINTS.glob("*/best.pt")):
        try:
            if model_id(load_checkpoint(path)[0])[:16] == wanted:
                return path
        except CheckpointError:
            continue
        tried.append(path.parent.name)
    raise ValueError(f"no checkpoint under {CHECKPOINTS} has model id {wanted.hex()} (tried {tried or 'none'}); "
                     "pass --checkpoint PATH, the checkpoint that compressed the file")  # fmt: skip


def _cmd_compress(args) -> int:
    kind, images = _kind_of(load_images(args.images, args.key), args.kind)
    path = args.checkpoint or DEFAULT_CHECKPOINTS[kind]
    model = _load_model(Path(path))
    if model.likelihood == "logistic_mixture" and kind == "binarized":
        images = images * np.uint8(255)  # binary images are 8-bit images too (0 and 255)
    elif model.likelihood == "bernoulli" and kind == "8bit":
        raise ValueError(f"{path} models binarized images, but these are grey-level; use an 8-bit checkpoint "
                         f"(the default for grey-level images is {DEFAULT_CHECKPOINTS['8bit']})")  # fmt: skip
    progress = args.progress and len(images) > PROGRESS_THRESHOLD
    mode = "lossy" if args.lossy else "lossless"
    result = compress(model, images, mode, latent_bits=args.latent_bits, step=args.step, progress=progress)
    Path(args.output).write_bytes(result.data)
    print(f"{result.header.mode}: {result.n_images} images -> {args.output} ({result.file_bytes:,} bytes, "
          f"{result.bits_per_dim:.4f} bits/dim; {result.seconds:.1f} s)")  # fmt: skip
    return 0


def _cmd_decompress(args) -> int:
    from PIL import Image

    blob = Path(args.file).read_bytes()
    header = read_header(blob)
    path = Path(args.checkpoint) if args.checkpoint else _find_checkpoint(header.model_id)
    images = decompress(_load_model(path), blob, progress=args.progress and header.n_images > PROGRESS_THRESHOLD)
    if header.mode == "lossless-binary":
        images = images * np.uint8(255)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(out / f"{i:05d}.png")
    print(f"{header.mode}: {len(images)} images -> {out}/00000.png ... {len(images) - 1:05d}.png")
    return 0


def _cmd_info(args) -> int:
    info = read_header(Path(args.file).read_bytes()).describe()
    width = max(map(len, info))
    for name, value in info.items():
        print(f"{name:<{width}}  {f'{value:.4f}' if isinstance(value, float) and 'bits' in name else value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vae_utils.codec",
        description="Compress 28x28 grayscale images with the book's VAEs: lossless bits-back coding or a lossy "
        "codec of quantized latents. Example: python -m vae_utils.codec compress a.png b.png -o out.vae",
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="images -> a .vae file")
    c.add_argument("images", nargs="+", help="PNG files, or .npy/.npz arrays of shape (N, 28, 28) with values 0..255")
    c.add_argument("-o", "--output", required=True, help="the .vae file to write")
    how = c.add_mutually_exclusive_group()
    how.add_argument(
        "--lossless", action="store_true", help="bits-back coding; decompress restores every pixel (default)"
    )
    how.add_argument("--lossy", action="store_true", help="quantized latents; decompress gives the decoder's mean")
    c.add_argument(
        "--step",
        type=float,
        default=DEFAULT_STEP,
        help=f"lossy: quantization step of the latents; larger is smaller and blurrier (default {DEFAULT_STEP})",
    )
    c.add_argument(
        "--latent-bits",
        type=int,
        default=DEFAULT_LATENT_BITS,
        help=f"lossless: 2**bits buckets per latent dimension (default {DEFAULT_LATENT_BITS})",
    )
    c.add_argument(
        "--kind",
        choices=("auto", "binarized", "8bit"),
        default="auto",
        help="auto (default): binarized if every pixel is 0/1 or 0/255, else 8bit; picks the default checkpoint. "
        "Binary images are decompressed as 0/255 PNGs",
    )
    c.add_argument(
        "--checkpoint",
        help="the model (default: checkpoints/conv_binarized/best.pt for binary images, checkpoints/conv_8bit/best.pt "
        "for grey-level ones)",
    )
    c.add_argument("--key", help="the array to take from an .npz holding several (e.g. x_test)")
    d = sub.add_parser("decompress", help="a .vae file -> PNG files 00000.png, 00001.png, ...")
    d.add_argument("file")
    d.add_argument("-o", "--output", required=True, help="folder for the PNG files (created if needed)")
    d.add_argument(
        "--checkpoint",
        help="the model that compressed the file (default: the checkpoints/*/best.pt with the file's model id)",
    )
    i = sub.add_parser("info", help="print a .vae file's header: mode, model id, images, bytes, bits/dim")
    i.add_argument("file")
    for q in (c, d):
        q.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"compress": _cmd_compress, "decompress": _cmd_decompress, "info": _cmd_info}[args.command]
    try:
        return command(args)
    except (ValueError, TypeError, OSError, CheckpointError) as error:  # CodecError is a ValueError
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
