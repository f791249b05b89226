"""The ``.vae`` file: constants, input checks, the model id, the header (read and checked before anything
runs), the initial words, and :class:`Compressed`, what :func:`vae_utils.codec.compress` returns."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import constriction
import numpy as np
import torch
from tqdm.auto import tqdm

from vae_utils.model import IMAGE_SHAPE

MAGIC = b"VAEC"
FORMAT_VERSION = 2
"""The newest version; :func:`read_header` reads every version in :data:`READABLE_VERSIONS`."""
READABLE_VERSIONS = (1, 2)
MODES = ("lossless-binary", "lossless-8bit", "lossy", "lossless-binary-deep", "lossless-8bit-deep")
"""The modes a file records, by index; :func:`compress` takes ``mode="lossless"`` or ``"lossy"`` and picks the
first two from the model's likelihood. A new mode is appended here with its parameter block (version 2 files
carry the block's length), so adding one needs no new format version."""
ARITHMETICS = ("float", "integer")
"""How the model computed the probabilities: float32 on the CPU (decodes on the same kind of machine), or the
integer networks of :mod:`vae_utils.shrink` (decode bit-exactly everywhere). Version 1 files are all float."""
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
MAX_LANES = 64
"""At most this many ANS stacks (lanes) in one lossless file."""
MAX_PARAMS_BYTES = 1024
"""A version 2 parameter block is at most this long."""

_HEADER = struct.Struct("<4sBB16sIHH12sI")
_HEADER_V2 = struct.Struct("<4sBBBx16sIHHH")  # ... then the parameter block and the payload length (u32)
_LOSSLESS_PARAMS = struct.Struct("<B3xII")
_LOSSLESS_PARAMS_V2 = struct.Struct("<BBxxI")  # ... then (stripped words, payload words) per lane
_LANE = struct.Struct("<II")
_DEEP_PARAMS = struct.Struct("<BBBxII")  # latent_bits, order, layers, 0, seed words, stripped words
DEEP_ORDERS = ("bitswap", "bbans")
"""The orders in which the ``-deep`` modes code a model's latent layers (:mod:`vae_utils.codec.hierarchy`)."""
MAX_LAYERS = 16
"""At most this many latent layers in a ``-deep`` file."""
_LOSSY_PARAMS = struct.Struct("<dI")
_LENGTH = struct.Struct("<I")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size
"""The length of a version 1 header; a version 2 header is 38 bytes plus its parameter block."""
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


def model_id(model, decoder_only: bool = False) -> bytes:
    """sha256 (32 bytes) of the model class, its config and its weights; a file stores the first 16 bytes.

    An integer model (``model.arithmetic == "integer"``, :mod:`vae_utils.shrink`) is identified by its
    likelihood, its layers and their integer tensors; ``decoder_only``: by its decoder alone, which is all a
    lossy file needs, so that a receiver can hold the decoder without the encoder.
    """
    if getattr(model, "arithmetic", "float") == "integer":
        return _integer_model_id(model, decoder_only)
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


def _integer_model_id(model, decoder_only: bool) -> bytes:
    parts = ("decoder",) if decoder_only else ("decoder", "encoder")
    if any(getattr(model, part, None) is None for part in parts):
        raise ValueError("this integer model has no encoder: lossless files need the whole model")
    digest = hashlib.sha256(b"vae_utils.codec integer model id\0")
    config = {k: v for k, v in model.config.items() if k not in ("encoder", "decoder") or k in parts}
    digest.update(f"{json.dumps(config, sort_keys=True)}\0".encode())
    state = model.state_dict()
    for name in sorted(n for n in state if n.split(".")[0] in parts):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.digest()


# ------------------------------------------------------------------------------------------------ the header


@dataclasses.dataclass(frozen=True)
class Header:
    """The fields of a ``.vae`` file (see the package docstring); ``read_header`` returns one checked.

    ``version`` 1 is written for float files of the first three modes (as every vae_utils before version 2 of
    the format wrote them), 2 for everything else: integer arithmetic, several lanes, modes added later.
    """

    mode: str
    model_id: bytes
    n_images: int
    height: int = IMAGE_SHAPE[1]
    width: int = IMAGE_SHAPE[2]
    latent_bits: int = 0  # lossless: 2**latent_bits buckets per latent dimension
    seed_words: int = 0  # lossless: the initial words each lane's coder starts from
    stripped_words: int = 0  # lossless, version 1: bottom seed words never touched, left out of the payload
    step: float = 0.0  # lossy: quantization step of the latents
    symbol_range: int = 0  # lossy: symbols lie in -symbol_range..symbol_range
    payload_bytes: int = 0
    version: int = 1
    arithmetic: str = "float"
    lane_stripped: tuple[int, ...] = ()  # lossless, version 2: stripped seed words of each lane
    lane_words: tuple[int, ...] = ()  # lossless, version 2: each lane's payload words, in lane order
    order: str = ""  # -deep modes: "bitswap" or "bbans", the order of the latent layers' pops and pushes
    layers: int = 0  # -deep modes: the latent layers the coder codes (a mixture prior's component is one)

    @property
    def deep(self) -> bool:
        """A model with a learned prior or several latent layers (Chapter 8): one stack, an order, layers."""
        return self.mode.endswith("-deep")

    @property
    def lanes(self) -> int:
        """How many ANS stacks the images are spread over (lossless); 1 in a version 1 file."""
        return max(len(self.lane_words), 1)

    @property
    def header_bytes(self) -> int:
        return HEADER_BYTES if self.version == 1 else _HEADER_V2.size + len(self._params()) + _LENGTH.size

    @property
    def file_bytes(self) -> int:
        return self.header_bytes + self.payload_bytes + _CRC.size

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
        if self.deep:
            order = DEEP_ORDERS.index(self.order)
            return _DEEP_PARAMS.pack(self.latent_bits, order, self.layers, self.seed_words, self.stripped_words)
        if self.version == 1:
            return _LOSSLESS_PARAMS.pack(self.latent_bits, self.seed_words, self.stripped_words)
        lanes = b"".join(_LANE.pack(s, w) for s, w in zip(self.lane_stripped, self.lane_words))
        return _LOSSLESS_PARAMS_V2.pack(self.latent_bits, len(self.lane_words), self.seed_words) + lanes

    def pack(self) -> bytes:
        """The header's bytes (46 in version 1; 38 plus the parameter block in version 2)."""
        mode, mid = MODES.index(self.mode), self.model_id[:16]
        if self.version == 1:
            return _HEADER.pack(MAGIC, 1, mode, mid, self.n_images, self.height, self.width, self._params(),
                                self.payload_bytes)  # fmt: skip
        params = self._params()
        return (_HEADER_V2.pack(MAGIC, 2, mode, ARITHMETICS.index(self.arithmetic), mid, self.n_images,
                                self.height, self.width, len(params)) + params + _LENGTH.pack(self.payload_bytes))  # fmt: skip

    def seed_key(self) -> bytes:
        """The header fields the initial words are derived from: all but the stripped counts and payload lengths."""
        fields = dataclasses.replace(self, stripped_words=0, payload_bytes=0, lane_stripped=(0,) * len(self.lane_stripped),
                                     lane_words=(0,) * len(self.lane_words))  # fmt: skip
        return fields.pack()

    def describe(self) -> dict:
        """A JSON-ready summary, as ``python -m vae_utils.codec info`` prints it."""
        out = {"mode": self.mode, "format_version": self.version}
        if self.version > 1:  # every version 1 file is float
            out["arithmetic"] = self.arithmetic
        out.update(model_id=self.model_id[:16].hex(), n_images=self.n_images, shape=[self.height, self.width])
        if self.mode == "lossy":
            out.update(step=self.step, symbol_range=self.symbol_range)
        elif self.deep:
            out.update(order=self.order, layers=self.layers, latent_bits=self.latent_bits, seed_words=self.seed_words,
                       stripped_words=self.stripped_words)  # fmt: skip
        elif self.version == 1:
            out.update(latent_bits=self.latent_bits, seed_words=self.seed_words, stripped_words=self.stripped_words)
        else:
            out.update(latent_bits=self.latent_bits, seed_words=self.seed_words, lanes=self.lanes,
                       stripped_words=sum(self.lane_stripped))  # fmt: skip
        out.update(file_bytes=self.file_bytes, payload_bytes=self.payload_bytes, bits_per_dim=self.bits_per_dim,
                   payload_bits_per_dim=self.payload_bits_per_dim)  # fmt: skip
        return out


def _symbol_range(step: float) -> int:
    return math.ceil(8 / step)


def _truncated(n: int, needed: int, what: str) -> CodecError:
    return CodecError(f"the file is truncated: it has {n} bytes, but {what} needs {needed}")


def _check_lossy(step: float, symbol_range: int) -> None:
    if not STEP_RANGE[0] <= step <= STEP_RANGE[1]:  # also rejects nan
        raise CodecError(f"the header's quantization step {step!r} is outside [{STEP_RANGE[0]}, {STEP_RANGE[1]}]")
    if symbol_range != _symbol_range(step):
        raise CodecError(f"the header's symbol range {symbol_range} is not ceil(8 / step) = {_symbol_range(step)}")


def _check_lossless(latent_bits: int, seed_words: int, stripped: Sequence[int]) -> None:
    low, high = LATENT_BITS_RANGE
    if not low <= latent_bits <= high:
        raise CodecError(f"the header's latent_bits {latent_bits} is outside {low}..{high}")
    if not 2 <= seed_words <= MAX_SEED_WORDS or any(s > seed_words for s in stripped):
        raise CodecError(f"the header's seed words ({seed_words}, {list(stripped)} stripped) are out of range")


def _split(blob: bytes, n: int) -> tuple[int, dict, bytes, int]:
    """Version, the fields common to both versions, the parameter block and the payload length, after the
    length checks (truncated, trailing bytes) and the CRC."""
    version = blob[4]
    if version == 1:
        if n < HEADER_BYTES + _CRC.size:
            raise _truncated(n, HEADER_BYTES + _CRC.size, "the header and checksum")
        _, _, mode, mid, count, height, width, params, payload_bytes = _HEADER.unpack_from(blob)
        arithmetic, head = 0, HEADER_BYTES
    else:
        fixed = _HEADER_V2.size
        if n < fixed + _LENGTH.size + _CRC.size:
            raise _truncated(n, fixed + _LENGTH.size + _CRC.size, "the header and checksum")
        _, _, mode, arithmetic, mid, count, height, width, length = _HEADER_V2.unpack_from(blob)
        if length > MAX_PARAMS_BYTES:
            raise CodecError(f"the header says its parameter block has {length} bytes; at most {MAX_PARAMS_BYTES}")
        head = fixed + length + _LENGTH.size
        if n < head + _CRC.size:
            raise _truncated(n, head + _CRC.size, f"a {length}-byte parameter block as its header says,")
        params, payload_bytes = blob[fixed : fixed + length], _LENGTH.unpack_from(blob, fixed + length)[0]
    expected = head + payload_bytes + _CRC.size
    if n < expected:
        raise _truncated(n, expected, f"a {payload_bytes}-byte payload as its header says,")
    if n > expected:
        raise CodecError(f"the file has {n - expected} bytes after its end ({expected} bytes per its header)")
    stored, computed = _CRC.unpack_from(blob, n - _CRC.size)[0], zlib.crc32(blob[: n - _CRC.size])
    if stored != computed:
        raise CodecError(
            f"checksum mismatch (stored CRC-32 {stored:08x}, computed {computed:08x}): the file is corrupted"
        )
    fields = {"mode": mode, "arithmetic": arithmetic, "model_id": mid, "n_images": count, "height": height,
              "width": width}  # fmt: skip
    return version, fields, params, payload_bytes


def read_header(blob: bytes) -> Header:
    """Check a whole ``.vae`` file (magic, version, lengths, CRC-32, field ranges) and return its header.

    Raises :class:`CodecError` for anything that is not an intact file of a readable version; reads no model.
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
    if blob[4] not in READABLE_VERSIONS:
        raise CodecError(
            f"format version {blob[4]}, but this vae_utils reads versions {READABLE_VERSIONS[0]} to "
            f"{READABLE_VERSIONS[-1]}: the file was written by another vae_utils version (use that one), or it is "
            "corrupted"
        )
    version, f, params, payload_bytes = _split(blob, n)
    # From here on the bytes are as written; the checks below guard against a crafted (hostile) header.
    if f["mode"] >= len(MODES):
        raise CodecError(f"unknown mode {f['mode']}; version {version} knows {dict(enumerate(MODES))}")
    if f["arithmetic"] >= len(ARITHMETICS):
        raise CodecError(f"unknown arithmetic {f['arithmetic']}; this vae_utils knows {dict(enumerate(ARITHMETICS))}")
    if not 1 <= f["n_images"] <= MAX_IMAGES:
        raise CodecError(f"the header says {f['n_images']} images; a file holds 1..{MAX_IMAGES}")
    if (f["height"], f["width"]) != IMAGE_SHAPE[1:]:
        raise CodecError(f"the header says {f['height']}x{f['width']} images; the codec's models make 28x28")
    if payload_bytes == 0 or payload_bytes % 4:
        raise CodecError(f"the payload must be a positive whole number of 32-bit words, got {payload_bytes} bytes")
    mode = MODES[f["mode"]]
    common = dict(f, mode=mode, arithmetic=ARITHMETICS[f["arithmetic"]], payload_bytes=payload_bytes,
                  version=version)  # fmt: skip
    if mode == "lossy":
        if len(params) != _LOSSY_PARAMS.size:
            raise CodecError(f"a lossy header's parameter block has {_LOSSY_PARAMS.size} bytes, not {len(params)}")
        step, symbol_range = _LOSSY_PARAMS.unpack(params)
        _check_lossy(step, symbol_range)
        return Header(**common, step=step, symbol_range=symbol_range)
    if mode.endswith("-deep"):
        return _deep_header(common, params)
    if version == 1:
        if params[1:4] != b"\0\0\0":
            raise CodecError("the header's reserved bytes are not zero")
        latent_bits, seed_words, stripped = _LOSSLESS_PARAMS.unpack(params)
        _check_lossless(latent_bits, seed_words, [stripped])
        return Header(**common, latent_bits=latent_bits, seed_words=seed_words, stripped_words=stripped)
    if len(params) < _LOSSLESS_PARAMS_V2.size or params[2:4] != b"\0\0":
        raise CodecError("the lossless parameter block is too short or its reserved bytes are not zero")
    latent_bits, lanes, seed_words = _LOSSLESS_PARAMS_V2.unpack_from(params)
    if not 1 <= lanes <= min(MAX_LANES, f["n_images"]):
        raise CodecError(f"the header says {lanes} lanes; a file of {f['n_images']} images has 1..{MAX_LANES} and "
                         "no more lanes than images")  # fmt: skip
    if len(params) != _LOSSLESS_PARAMS_V2.size + lanes * _LANE.size:
        raise CodecError(f"the lossless parameter block of {lanes} lanes has "
                         f"{_LOSSLESS_PARAMS_V2.size + lanes * _LANE.size} bytes, not {len(params)}")  # fmt: skip
    pairs = [_LANE.unpack_from(params, _LOSSLESS_PARAMS_V2.size + i * _LANE.size) for i in range(lanes)]
    stripped, words = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    _check_lossless(latent_bits, seed_words, stripped)
    if min(words) < 1 or sum(words) * 4 != payload_bytes:
        raise CodecError(f"the lanes' payload words {list(words)} do not add up to the {payload_bytes}-byte payload")
    return Header(**common, latent_bits=latent_bits, seed_words=seed_words, lane_stripped=stripped, lane_words=words)


def _deep_header(common: dict, params: bytes) -> Header:
    """The header of a ``-deep`` file, its parameter block checked (version 2 only, float arithmetic)."""
    if common["version"] == 1:
        raise CodecError(f"a {common['mode']} file is written in format version 2; this one says version 1")
    if common["arithmetic"] != "float":
        raise CodecError(f"a {common['mode']} file is written with float arithmetic, not {common['arithmetic']}")
    if len(params) != _DEEP_PARAMS.size or params[3] != 0:
        raise CodecError(f"a {common['mode']} header's parameter block has {_DEEP_PARAMS.size} bytes with byte 3 "
                         f"zero; this one has {len(params)} bytes")  # fmt: skip
    latent_bits, order, layers, seed_words, stripped = _DEEP_PARAMS.unpack(params)
    _check_lossless(latent_bits, seed_words, [stripped])
    if order >= len(DEEP_ORDERS):
        raise CodecError(f"unknown order {order}; this vae_utils knows {dict(enumerate(DEEP_ORDERS))}")
    if not 2 <= layers <= MAX_LAYERS:
        raise CodecError(f"the header says {layers} latent layers; a {common['mode']} file has 2..{MAX_LAYERS}")
    return Header(**common, latent_bits=latent_bits, seed_words=seed_words, stripped_words=stripped,
                  order=DEEP_ORDERS[order], layers=layers)  # fmt: skip


def initial_words(key: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random uint32 words from sha256(key, counter): the same on every machine and numpy version."""
    blocks = (hashlib.sha256(b"vae_utils.codec initial bits\0" + key + i.to_bytes(4, "little")).digest()
              for i in range(-(-n // 8)))  # fmt: skip
    words = np.frombuffer(b"".join(blocks), dtype="<u4")[:n].astype(np.uint32)
    words[-1] |= 1  # an ANS stack never ends in a zero word
    return words


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
    head = dataclasses.replace(header, payload_bytes=len(payload)).pack()  # version 2: lane words already set
    return head + payload + _CRC.pack(zlib.crc32(head + payload))


def _bar(n: int, progress: bool, desc: str, backwards: bool = False):
    return tqdm(reversed(range(n)) if backwards else range(n), total=n, desc=desc, leave=False,
                disable=not progress, unit="image")  # fmt: skip
