"""Classical baselines, measured from real bytes exactly as the VAE codec is.

Every codec here writes real bytes, reads them back and counts them: the rate is ``8 * total_bytes`` bits
shared by ``n_images * H * W`` pixels (bits/dim) or ``total_bytes / n_images`` (bytes per image).

- Lossless, over the whole set as one stream: :func:`gzip_codec`, :func:`bz2_codec`, :func:`lzma_codec`.
- Lossless, one file per image (the bytes summed): :func:`png_codec`, :func:`webp_lossless_codec`.
- Lossy, one file per 8-bit image: :func:`jpeg_codec`, :func:`webp_lossy_codec`.
- Lossy transform coding: :func:`pca_codec` (PCA fitted on the training set, uniform quantization, ANS).

Lossless codecs decode what they wrote and raise :class:`RoundTripError` unless it equals the input exactly.
Images are ``uint8`` arrays ``(N, H, W)`` (MNIST: ``(N, 28, 28)``) and every codec is told their alphabet
with ``levels``: ``levels=2`` for binarized images in {0, 1}, ``levels=256`` for grey levels 0..255.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import lzma
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from vae_utils import data, evaluate

LEVELS = (2, 256)
LOSSLESS_CODECS = ("gzip", "bz2", "lzma", "png", "webp_lossless")
LOSSY_CODECS = ("jpeg", "webp", "pca")
PCA_HEADER = struct.Struct("<I")
"""The PCA stream's only header: the number of images, uint32 little-endian (4 bytes)."""
MAX_ALPHABET = 1 << 16
"""The largest number of quantization bins one PCA coefficient may use (a smaller ``step`` is refused)."""


class RoundTripError(RuntimeError):
    """A codec that claims to be lossless did not give back exactly what it was given."""


def bits_per_dim(total_bytes: int, n_images: int, dims: int = 784) -> float:
    """``8 * total_bytes`` bits spread over ``n_images * dims`` pixels: the rate in bits per pixel (bits/dim)."""
    for name, value in (("total_bytes", total_bytes), ("n_images", n_images), ("dims", dims)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if total_bytes < 0 or n_images < 1 or dims < 1:
        raise ValueError(
            f"need total_bytes >= 0, n_images >= 1 and dims >= 1, got {total_bytes}, {n_images} and {dims}"
        )
    return 8 * int(total_bytes) / (int(n_images) * int(dims))


@dataclasses.dataclass(frozen=True)
class CodecResult:
    """What one codec did to one set of images: real bytes, time, and (lossy codecs) distortion.

    ``total_bytes`` counts every byte a decoder needs besides its own fixed parameters (for PCA: the mean, the
    components and the symbol probabilities, like a VAE's weights). ``psnr_db`` and ``ssim`` are the means over
    images of the decoded images against the originals (``None`` for lossless codecs, where the decoded images
    are the originals). ``params`` holds the codec's settings, e.g. ``{"quality": 75}``.
    """

    name: str
    levels: int
    n_images: int
    dims: int
    total_bytes: int
    encode_seconds: float
    decode_seconds: float
    params: dict = dataclasses.field(default_factory=dict)
    psnr_db: float | None = None
    ssim: float | None = None

    @property
    def bits_per_dim(self) -> float:
        return bits_per_dim(self.total_bytes, self.n_images, self.dims)

    @property
    def bytes_per_image(self) -> float:
        return self.total_bytes / self.n_images

    @property
    def encode_images_per_second(self) -> float:
        return self.n_images / max(self.encode_seconds, 1e-12)

    @property
    def decode_images_per_second(self) -> float:
        return self.n_images / max(self.decode_seconds, 1e-12)

    def to_dict(self) -> dict:
        """A JSON-ready dict: the fields plus bits/dim, bytes per image and images per second."""
        out = dataclasses.asdict(self)
        for name in ("bits_per_dim", "bytes_per_image", "encode_images_per_second", "decode_images_per_second"):
            out[name] = getattr(self, name)
        return out


# ---------------------------------------------------------------------------------------------- input checks


def _check_levels(levels: object) -> int:
    if isinstance(levels, bool) or levels not in LEVELS:
        raise ValueError(f"levels must be 2 (binarized images in {{0, 1}}) or 256 (grey levels 0..255), got {levels!r}")
    return int(levels)


def _check_images(images: object, levels: int, name: str = "images") -> np.ndarray:
    """``images`` as a ``(N, H, W) uint8`` array with N >= 1 and every value below ``levels``."""
    levels = _check_levels(levels)
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(
            f"{name} must be a uint8 array ({'0/1' if levels == 2 else 'grey levels 0..255'}), got dtype "
            f"{images.dtype}; convert float images in [0, 1] with (x * {levels - 1}).round().astype(np.uint8)"
        )
    if images.ndim != 3 or 0 in images.shape:
        raise ValueError(f"{name} must have shape (N, H, W) with N, H, W >= 1, e.g. (N, 28, 28); got {images.shape}")
    if levels == 2 and (top := int(images.max())) > 1:
        raise ValueError(
            f"levels=2 means binary images in {{0, 1}}, but {name} hold values up to {top}; "
            "pass levels=256 for grey-level images (or binarize them with vae_utils.data)"
        )
    return np.ascontiguousarray(images)


def _check_quality(quality: object) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise TypeError(f"quality must be an int in 1..100, got {type(quality).__name__}: {quality!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    return int(quality)


def _check_round_trip(name: str, images: np.ndarray, decoded: np.ndarray) -> None:
    if decoded.shape != images.shape or decoded.dtype != images.dtype or not np.array_equal(decoded, images):
        wrong = int((decoded != images).sum()) if decoded.shape == images.shape else "all"
        raise RoundTripError(
            f"{name} did not decode to its input: got {decoded.dtype} {decoded.shape} for {images.dtype} "
            f"{images.shape}, {wrong} pixels differ"
        )


# ------------------------------------------------------------------------------ lossless: one stream per set


def to_bytes(images: np.ndarray, levels: int) -> bytes:
    """The raw bytes the stream compressors see: ``levels=256``: one byte per pixel, row by row;
    ``levels=2``: 8 pixels per byte (``np.packbits`` of each image, first pixel in the top bit; 28x28 = 98 bytes)."""
    images = _check_images(images, levels)
    if levels == 256:
        return images.tobytes()
    return np.packbits(images.reshape(len(images), -1), axis=1).tobytes()


def from_bytes(raw: bytes, levels: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The inverse of :func:`to_bytes`: ``(N, H, W) uint8`` images of the given shape."""
    n, h, w = shape
    if _check_levels(levels) == 256:
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()
    packed = np.frombuffer(raw, dtype=np.uint8).reshape(n, -1)
    return np.unpackbits(packed, axis=1, count=h * w).reshape(shape)


_STREAM_CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    # Each at its strongest setting. gzip with mtime=0 so that the same input always gives the same bytes.
    "gzip": (lambda raw: gzip.compress(raw, compresslevel=9, mtime=0), gzip.decompress),
    "bz2": (lambda raw: bz2.compress(raw, compresslevel=9), bz2.decompress),
    "lzma": (lambda raw: lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
}


def _stream_codec(name: str, images: np.ndarray, levels: int) -> CodecResult:
    images = _check_images(images, levels)
    compress, decompress = _STREAM_CODECS[name]
    start = time.perf_counter()
    stream = compress(to_bytes(images, levels))
    encoded = time.perf_counter()
    decoded = from_bytes(decompress(stream), levels, images.shape)
    finished = time.perf_counter()
    _check_round_trip(name, images, decoded)
    n, h, w = images.shape
    seconds = (encoded - start, finished - encoded)
    return CodecResult(name, levels, n, h * w, len(stream), *seconds)


def gzip_codec(images: np.ndarray, *, levels: int) -> CodecResult:
    """gzip (DEFLATE, level 9) of the whole set as one stream of :func:`to_bytes` (binary: bit-packed)."""
    return _stream_codec("gzip", images, levels)


def bz2_codec(images: np.ndarray, *, levels: int) -> CodecResult:
    """bzip2 (Burrows-Wheeler, level 9) of the whole set as one stream of :func:`to_bytes` (binary: bit-packed)."""
    return _stream_codec("bz2", images, levels)


def lzma_codec(images: np.ndarray, *, levels: int) -> CodecResult:
    """LZMA (an .xz stream, preset ``9 | PRESET_EXTREME``) of the whole set as one
    stream of :func:`to_bytes`."""
    return _stream_codec("lzma", images, levels)


# ------------------------------------------------------------------------------ lossless: one file per image


def _png_encode(image: np.ndarray, levels: int) -> bytes:
    buffer = io.BytesIO()
    pil = Image.fromarray(image.astype(bool)) if levels == 2 else Image.fromarray(image, mode="L")
    pil.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _webp_lossless_encode(image: np.ndarray, levels: int) -> bytes:
    buffer = io.BytesIO()
    grey = image * np.uint8(255) if levels == 2 else image  # binary as a black-and-white image, 0 and 255
    Image.fromarray(grey, mode="L").save(buffer, format="WEBP", lossless=True, quality=100, method=6)
    return buffer.getvalue()


def _webp_lossless_decode(encoded: bytes, levels: int) -> np.ndarray:
    grey = _decode_grey(encoded, levels)
    if levels == 2 and np.isin(grey, (0, 255)).all():
        return grey // np.uint8(255)
    return grey  # anything but 0 and 255 for a binary image stays > 1 and fails the round-trip check


def _decode_grey(encoded: bytes, levels: int) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as pil:
        if pil.mode == "1":  # a 1-bit PNG decodes to booleans
            return np.asarray(pil, dtype=np.uint8)
        return np.asarray(pil.convert("L"))  # WebP decodes to RGB; R = G = B converts back to L exactly


_IMAGE_CODECS: dict[str, tuple[Callable[[np.ndarray, int], bytes], Callable[[bytes, int], np.ndarray]]] = {
    "png": (_png_encode, _decode_grey),
    "webp_lossless": (_webp_lossless_encode, _webp_lossless_decode),
}


def _per_image_codec(name: str, images: np.ndarray, levels: int) -> CodecResult:
    images = _check_images(images, levels)
    encode, decode = _IMAGE_CODECS[name]
    start = time.perf_counter()
    files = [encode(image, levels) for image in images]
    encoded = time.perf_counter()
    decoded = np.stack([decode(file, levels) for file in files])
    finished = time.perf_counter()
    _check_round_trip(name, images, decoded)
    n, h, w = images.shape
    return CodecResult(name, levels, n, h * w, sum(map(len, files)), encoded - start, finished - encoded)


def png_codec(images: np.ndarray, *, levels: int) -> CodecResult:
    """One PNG file per image (Pillow, ``optimize=True``), the bytes summed. ``levels=2`` writes 1-bit PNGs
    (mode ``"1"``), ``levels=256`` 8-bit greyscale (mode ``"L"``). Every file's headers count: at least 57 of
    a 28x28 file's bytes are signature and chunk framing. (Pillow's ``optimize=True`` saves 0.5% on 8-bit MNIST
    but, oddly, costs about 1% more than the default settings on binarized MNIST: 1.371 vs 1.355 bits/dim.)"""
    return _per_image_codec("png", images, levels)


def webp_lossless_codec(images: np.ndarray, *, levels: int) -> CodecResult:
    """One lossless WebP file per image (``quality=100, method=6``: the strongest effort), the bytes summed.

    WebP has no 1-bit mode: binary images are stored as the black-and-white images they are, grey levels 0 and
    255 (on binarized MNIST, storing 0 and 1 instead happens to save about 1.5%). Slow: ~200 images/s.
    """
    return _per_image_codec("webp_lossless", images, levels)


def lossless_baselines(images: np.ndarray, *, levels: int) -> list[CodecResult]:
    """All five lossless codecs on the same images, in the order of :data:`LOSSLESS_CODECS`."""
    images = _check_images(images, levels)
    return [_stream_codec(name, images, levels) if name in _STREAM_CODECS else _per_image_codec(name, images, levels)
            for name in LOSSLESS_CODECS]  # fmt: skip


# -------------------------------------------------------------------------------------- lossy: one file per image


def _distortion(images: np.ndarray, decoded: np.ndarray, with_ssim: bool) -> tuple[float, float | None]:
    """Mean PSNR (dB, peak 255) and optionally mean SSIM: the same functions that score the VAE."""
    x, y = data.to_tensor(images), data.to_tensor(decoded)
    return evaluate.psnr(y, x).mean().item(), (evaluate.ssim(y, x).mean().item() if with_ssim else None)


def _lossy_per_image(name: str, images: np.ndarray, quality: int, with_ssim: bool, **options) -> CodecResult:
    images = _check_images(images, 256)
    quality = _check_quality(quality)
    fmt = {"jpeg": "JPEG", "webp": "WEBP"}[name]
    start = time.perf_counter()
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format=fmt, quality=quality, **options)
        files.append(buffer.getvalue())
    encoded = time.perf_counter()
    decoded = np.stack([_decode_grey(file, 256) for file in files])
    finished = time.perf_counter()
    psnr_db, ssim_value = _distortion(images, decoded, with_ssim)
    n, h, w = images.shape
    return CodecResult(name, 256, n, h * w, sum(map(len, files)), encoded - start, finished - encoded,
                       {"quality": quality}, psnr_db, ssim_value)  # fmt: skip


def jpeg_codec(images: np.ndarray, quality: int, *, ssim: bool = False) -> CodecResult:
    """One greyscale baseline JPEG per 8-bit image (Pillow/libjpeg, optimized Huffman tables), bytes summed.

    ``quality`` in 1..100. At 28x28 the file's headers and tables (a few hundred bytes) dominate: that is the
    real cost of a JPEG file this small. ``ssim=True`` also measures SSIM (slower).
    """
    return _lossy_per_image("jpeg", images, quality, ssim, optimize=True)


def webp_lossy_codec(images: np.ndarray, quality: int, *, ssim: bool = False) -> CodecResult:
    """One lossy WebP per 8-bit image (``method=6``: the strongest effort), bytes summed; ``quality`` in 1..100."""
    return _lossy_per_image("webp", images, quality, ssim, method=6)


# ------------------------------------------------------------------------------------- lossy: PCA transform coding


class PCA(NamedTuple):
    """Principal components of training images in [0, 1]: ``mean (D,)``, ``components (D, D)`` orthonormal rows
    sorted by decreasing ``variances (D,)``; D = H * W pixels of images of ``shape`` (H, W)."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    shape: tuple[int, int]


def _flat_unit(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def fit_pca(train_images: np.ndarray) -> PCA:
    """PCA of ``(N, H, W) uint8`` training images (pixels scaled to [0, 1]), via the D x D covariance matrix.

    Fit on the training split only: a test image must never shape the codec that compresses it.
    """
    if train_images is None or np.asarray(train_images).size == 0:
        raise ValueError("fit_pca needs training images (N >= 2 of shape (N, H, W)); got none")
    train_images = _check_images(train_images, 256, "train_images")
    if len(train_images) < 2:
        raise ValueError(f"fit_pca needs at least 2 training images, got {len(train_images)}")
    x = _flat_unit(train_images)
    mean = x.mean(axis=0)
    centred = x - mean
    variances, vectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    order = np.argsort(variances)[::-1]
    components = np.ascontiguousarray(vectors[:, order].T)
    return PCA(mean, components, np.clip(variances[order], 0.0, None), train_images.shape[1:])


@dataclasses.dataclass
class PCACoder:
    """Transform coding: project onto the first ``n_components`` principal components, quantize each coefficient
    to an integer symbol ``round(c / step)`` (``step`` in pixel units of [0, 1]), entropy-code the symbols with
    ANS (constriction), and reconstruct ``mean + step * symbols @ components`` rounded to 8 bits.

    Each component has its own categorical model over the symbols ``low[k]..high[k]`` seen on the training set
    (at least two), with probabilities (count + ``smoothing``) / total (Laplace smoothing), so every symbol in
    range can be coded. A test coefficient outside its training range is clamped into it (it costs distortion,
    never a failure). The models, the mean and the components are the decoder's fixed parameters, like a VAE's
    weights: they are not counted in the rate. Make one with :meth:`fit`.
    """

    pca: PCA
    n_components: int
    step: float
    low: np.ndarray
    probabilities: list[np.ndarray]

    @classmethod
    def fit(cls, train_images: np.ndarray, n_components: int, step: float, *, pca: PCA | None = None,
            smoothing: float = 1.0) -> PCACoder:  # fmt: skip
        """Fit the PCA (unless ``pca`` is given; it must come from the same training images) and the symbol models
        on ``train_images (N, H, W) uint8``."""
        if pca is None:
            pca = fit_pca(train_images)
        elif train_images is None or np.asarray(train_images).size == 0:
            raise ValueError("PCACoder.fit needs the training images to estimate symbol probabilities; got none")
        train_images = _check_images(train_images, 256, "train_images")
        if train_images.shape[1:] != pca.shape:
            raise ValueError(f"train_images have shape {train_images.shape[1:]} but the PCA was fitted on {pca.shape}")
        dims = pca.components.shape[1]
        if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
            raise TypeError(f"n_components must be an int, got {type(n_components).__name__}: {n_components!r}")
        if not 1 <= n_components <= dims:
            raise ValueError(f"n_components must be in 1..{dims}, got {n_components}")
        if isinstance(step, bool) or not isinstance(step, (int, float, np.integer)) or not 0 < step < np.inf:
            raise ValueError(f"step must be a positive number (pixel units of [0, 1]), got {step!r}")
        if not smoothing > 0:
            raise ValueError(f"smoothing must be positive (it keeps unseen symbols codable), got {smoothing!r}")
        coder = cls(pca, int(n_components), float(step), np.zeros(0, np.int64), [])
        symbols = coder._quantize(train_images)
        low = symbols.min(axis=0)
        high = np.maximum(symbols.max(axis=0), low + 1)  # constriction needs two symbols, even for a constant
        if (width := int((high - low).max()) + 1) > MAX_ALPHABET:
            raise ValueError(
                f"step={step} gives {width} quantization bins for one coefficient (at most {MAX_ALPHABET}); "
                "use a larger step"
            )
        coder.low = low
        for k in range(coder.n_components):
            counts = np.bincount(symbols[:, k] - low[k], minlength=int(high[k] - low[k]) + 1)
            coder.probabilities.append((counts + smoothing) / (counts.sum() + smoothing * len(counts)))
        return coder

    @property
    def high(self) -> np.ndarray:
        return self.low + np.array([len(p) for p in self.probabilities], dtype=np.int64) - 1

    def _quantize(self, images: np.ndarray) -> np.ndarray:
        coefficients = (_flat_unit(images) - self.pca.mean) @ self.pca.components[: self.n_components].T
        return np.rint(coefficients / self.step).astype(np.int64)

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images, 256)
        if images.shape[1:] != self.pca.shape:
            raise ValueError(f"images have shape {images.shape[1:]} but the PCA was fitted on {self.pca.shape}")
        return images

    def symbols(self, images: np.ndarray) -> np.ndarray:
        """The integer symbols ``(N, n_components) int32`` of ``(N, H, W) uint8`` images, clamped to the range
        the models cover."""
        return np.clip(self._quantize(self._check(images)), self.low, self.high).astype(np.int32)

    def reconstruct(self, symbols: np.ndarray) -> np.ndarray:
        """Images ``(N, H, W) uint8`` from symbols ``(N, n_components)``."""
        symbols = np.asarray(symbols)
        if symbols.ndim != 2 or symbols.shape[1] != self.n_components:
            raise ValueError(f"symbols must have shape (N, {self.n_components}), got {symbols.shape}")
        x = self.pca.mean + (symbols * self.step) @ self.pca.components[: self.n_components]
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).reshape(len(symbols), *self.pca.shape)

    def _models(self) -> list:
        import constriction

        return [constriction.stream.model.Categorical(p, perfect=False) for p in self.probabilities]

    def encode_symbols(self, symbols: np.ndarray) -> bytes:
        """Symbols ``(N, n_components)`` -> bytes: a 4-byte header (N) and the ANS stream (32-bit words, little-
        endian), one stream for all images. Each symbol must lie in its component's range ``low..high``."""
        import constriction

        symbols = np.asarray(symbols)
        if symbols.ndim != 2 or symbols.shape[1] != self.n_components or len(symbols) < 1:
            raise ValueError(f"symbols must have shape (N >= 1, {self.n_components}), got {symbols.shape}")
        if (symbols < self.low).any() or (symbols > self.high).any():
            raise ValueError("symbols outside the models' range low..high; get them from PCACoder.symbols()")
        coder = constriction.stream.stack.AnsCoder()
        models = self._models()
        for k in reversed(range(self.n_components)):  # a stack: the last component pushed is the first popped
            coder.encode_reverse((symbols[:, k] - self.low[k]).astype(np.int32), models[k])
        return PCA_HEADER.pack(len(symbols)) + coder.get_compressed().astype("<u4").tobytes()

    def decode_symbols(self, stream: bytes) -> np.ndarray:
        """The inverse of :meth:`encode_symbols`: ``(N, n_components) int32``."""
        import constriction

        if len(stream) < PCA_HEADER.size or len(stream) % 4:
            raise ValueError(f"a PCA stream is a 4-byte header and 32-bit words; got {len(stream)} bytes")
        (n,) = PCA_HEADER.unpack_from(stream)
        words = np.frombuffer(stream, dtype="<u4", offset=PCA_HEADER.size).astype(np.uint32)
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = np.empty((n, self.n_components), dtype=np.int32)
        for k, model in enumerate(self._models()):
            symbols[:, k] = coder.decode(model, n) + self.low[k]
        return symbols

    def encode(self, images: np.ndarray) -> bytes:
        """``(N, H, W) uint8`` images -> bytes."""
        return self.encode_symbols(self.symbols(images))

    def decode(self, stream: bytes) -> np.ndarray:
        """Bytes -> ``(N, H, W) uint8`` images."""
        return self.reconstruct(self.decode_symbols(stream))


def pca_codec(train_images: np.ndarray, images: np.ndarray, n_components: int, step: float, *,
              pca: PCA | None = None, smoothing: float = 1.0, ssim: bool = False) -> CodecResult:  # fmt: skip
    """PCA transform coding of 8-bit ``images`` with a :class:`PCACoder` fitted on ``train_images``.

    The rate is the real length of the stream (4-byte header + ANS words); the decoded symbols are checked
    against the encoded ones. ``params`` records ``n_components``, ``step`` and ``clamped_symbols`` (how many
    test symbols fell outside the training range). Pass a precomputed ``pca`` to sweep settings quickly.
    """
    coder = PCACoder.fit(train_images, n_components, step, pca=pca, smoothing=smoothing)
    images = coder._check(images)
    start = time.perf_counter()
    raw = coder._quantize(images)
    symbols = np.clip(raw, coder.low, coder.high).astype(np.int32)
    stream = coder.encode_symbols(symbols)
    encoded = time.perf_counter()
    decoded_symbols = coder.decode_symbols(stream)
    decoded = coder.reconstruct(decoded_symbols)
    finished = time.perf_counter()
    _check_round_trip("the PCA symbol stream", symbols, decoded_symbols)
    psnr_db, ssim_value = _distortion(images, decoded, ssim)
    params = {"n_components": coder.n_components, "step": coder.step, "clamped_symbols": int((raw != symbols).sum())}
    n, h, w = images.shape
    return CodecResult("pca", 256, n, h * w, len(stream), encoded - start, finished - encoded, params, psnr_db,
                       ssim_value)  # fmt: skip


# ------------------------------------------------------------------------------------------ rate-distortion curves


def rate_distortion_curve(codec: str, images: np.ndarray, settings: Iterable, *,
                          train_images: np.ndarray | None = None, pca: PCA | None = None,
                          ssim: bool = False) -> list[CodecResult]:  # fmt: skip
    """One :class:`CodecResult` per setting, in order, for plotting PSNR against bytes per image.

    ``codec="jpeg"`` or ``"webp"``: ``settings`` are qualities in 1..100. ``codec="pca"``: ``settings`` are
    ``(n_components, step)`` pairs and ``train_images`` are required (the PCA is fitted once, on them, unless
    ``pca`` fitted on them is given).
    """
    if codec not in LOSSY_CODECS:
        raise ValueError(f"unknown lossy codec {codec!r}; choose one of {', '.join(LOSSY_CODECS)}")
    settings = list(settings)
    if codec == "jpeg":
        return [jpeg_codec(images, quality, ssim=ssim) for quality in settings]
    if codec == "webp":
        return [webp_lossy_codec(images, quality, ssim=ssim) for quality in settings]
    if train_images is None:
        raise ValueError("codec='pca' needs train_images: the PCA and its symbol models are fitted on them")
    if not all(isinstance(s, Sequence) and len(s) == 2 for s in settings):
        raise ValueError(f"codec='pca' needs settings as (n_components, step) pairs, got {settings!r}")
    pca = fit_pca(train_images) if pca is None else pca
    return [pca_codec(train_images, images, k, step, pca=pca, ssim=ssim) for k, step in settings]
