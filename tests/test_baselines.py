"""Tests for vae_utils.baselines: classical codecs and PCA, measured from real bytes."""

import bz2
import gzip
import io
import json
import lzma

import numpy as np
import pytest
from PIL import Image

from vae_utils import baselines, data

LOSSLESS = {
    "gzip": baselines.gzip_codec,
    "bz2": baselines.bz2_codec,
    "lzma": baselines.lzma_codec,
    "png": baselines.png_codec,
    "webp_lossless": baselines.webp_lossless_codec,
}


@pytest.fixture(scope="module")
def grey():
    """200 real 8-bit MNIST test images."""
    return data.get_split("test").images[:200]


@pytest.fixture(scope="module")
def binary():
    """The same 200 images, statically binarized exactly as the book's binarized test set."""
    return data.split_images("test", "binarized")[:200]


@pytest.fixture(scope="module")
def train():
    """2,000 training images: enough for a PCA and its symbol models, quick to fit."""
    return data.get_split("train").images[:2000]


@pytest.fixture(scope="module")
def pca(train):
    return baselines.fit_pca(train)


def low_rank_images(n: int, seed: int, corners: bool = False) -> np.ndarray:
    """Integer combinations of three 0/1 stroke patterns: exactly rank 3, values 0..240 with no rounding."""
    patterns = np.zeros((3, 28, 28), dtype=np.int64)
    patterns[0, 5:23, 12:16] = 1  # a vertical bar
    patterns[1, 12:16, 5:23] = 1  # a horizontal bar
    patterns[2, 4:24, 4:24] = np.eye(20, dtype=np.int64)  # a diagonal
    weights = np.random.default_rng(seed).integers(0, 81, size=(n, 3))
    if corners:  # the extreme combinations, so that every linear projection of the others lies inside the range
        weights[:8] = 80 * np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])
    return np.einsum("nk,khw->nhw", weights, patterns).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------ units


def test_bits_per_dim_counts_eight_bits_per_byte_over_all_pixels():
    assert baselines.bits_per_dim(98, 1) == 1.0  # 98 bytes = 784 bits for one 28x28 image
    assert baselines.bits_per_dim(784 * 10, 10) == 8.0
    assert baselines.bits_per_dim(3, 2, dims=4) == 3.0
    with pytest.raises(ValueError, match="n_images >= 1"):
        baselines.bits_per_dim(10, 0)
    with pytest.raises(TypeError, match="total_bytes must be an int"):
        baselines.bits_per_dim(1.5, 1)


def test_raw_representation_packs_binary_images_eight_pixels_per_byte(binary, grey):
    assert len(baselines.to_bytes(binary, levels=2)) == 98 * len(binary)
    assert len(baselines.to_bytes(grey, levels=256)) == 784 * len(grey)
    for images, levels in ((binary, 2), (grey, 256)):
        back = baselines.from_bytes(baselines.to_bytes(images, levels), levels, images.shape)
        np.testing.assert_array_equal(back, images)
    odd = np.random.default_rng(0).integers(0, 2, size=(3, 5, 3), dtype=np.uint8)  # 15 pixels: padded to 2 bytes
    np.testing.assert_array_equal(baselines.from_bytes(baselines.to_bytes(odd, 2), 2, odd.shape), odd)


# ------------------------------------------------------------------------------------------------------ lossless


@pytest.mark.parametrize("levels", [2, 256])
@pytest.mark.parametrize("name", baselines.LOSSLESS_CODECS)
def test_lossless_codecs_round_trip_and_report_rates_from_their_bytes(name, levels, binary, grey):
    images = binary if levels == 2 else grey
    result = LOSSLESS[name](images, levels=levels)
    assert (result.name, result.levels, result.n_images, result.dims) == (name, levels, len(images), 784)
    assert result.psnr_db is None and result.total_bytes > 0
    assert result.bits_per_dim == pytest.approx(8 * result.total_bytes / (len(images) * 784))
    assert result.bytes_per_image == pytest.approx(result.total_bytes / len(images))
    assert result.encode_seconds > 0 and result.decode_seconds > 0
    assert result.encode_images_per_second == pytest.approx(len(images) / result.encode_seconds)
    # Each codec's payload beats the raw 1 or 8 bits/dim; a 1-bit PNG only once its fixed 57 bytes of signature
    # and chunk framing per file are set aside (28x28 raw bits are just 98 bytes).
    overhead = 57 * len(images) if (name, levels) == ("png", 2) else 0
    raw_bits_per_dim = 1 if levels == 2 else 8
    assert baselines.bits_per_dim(result.total_bytes - overhead, len(images)) < raw_bits_per_dim
    json.dumps(result.to_dict())  # JSON-ready


def test_stream_codecs_count_exactly_the_compressed_bytes_at_maximum_level(binary, grey):
    packed, raw = np.packbits(binary.reshape(len(binary), -1), axis=1).tobytes(), grey.tobytes()
    assert baselines.gzip_codec(binary, levels=2).total_bytes == len(gzip.compress(packed, 9, mtime=0))
    assert baselines.bz2_codec(grey, levels=256).total_bytes == len(bz2.compress(raw, 9))
    xz = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    assert baselines.lzma_codec(grey, levels=256).total_bytes == len(xz)


def test_png_writes_one_bit_files_for_binary_images(binary):
    result = baselines.png_codec(binary[:20], levels=2)
    files = []
    for image in binary[:20]:
        buffer = io.BytesIO()
        Image.fromarray(image.astype(bool)).save(buffer, format="PNG", optimize=True)
        files.append(buffer.getvalue())
    assert result.total_bytes == sum(map(len, files))
    assert Image.open(io.BytesIO(files[0])).mode == "1"


def test_compressors_beat_raw_and_binary_beats_grey(binary, grey):
    for codec in (baselines.gzip_codec, baselines.bz2_codec, baselines.lzma_codec):
        on_binary, on_grey = codec(binary, levels=2), codec(grey, levels=256)
        assert on_binary.total_bytes < len(baselines.to_bytes(binary, 2))
        assert on_grey.total_bytes < len(baselines.to_bytes(grey, 256))
        assert on_binary.bits_per_dim < on_grey.bits_per_dim


def test_lossless_baselines_runs_all_five_in_order(binary):
    results = baselines.lossless_baselines(binary[:30], levels=2)
    assert [r.name for r in results] == list(baselines.LOSSLESS_CODECS)


def test_a_stream_that_does_not_decode_to_its_input_is_refused(monkeypatch, grey):
    compress, decompress = baselines._STREAM_CODECS["gzip"]

    def corrupting(stream: bytes) -> bytes:
        raw = bytearray(decompress(stream))
        raw[400] ^= 1
        return bytes(raw)

    monkeypatch.setitem(baselines._STREAM_CODECS, "gzip", (compress, corrupting))
    with pytest.raises(baselines.RoundTripError, match="gzip did not decode to its input.*1 pixels differ"):
        baselines.gzip_codec(grey[:5], levels=256)


def test_a_file_that_does_not_decode_to_its_image_is_refused(monkeypatch, binary):
    encode, decode = baselines._IMAGE_CODECS["png"]
    monkeypatch.setitem(baselines._IMAGE_CODECS, "png", (encode, lambda file, levels: 1 - decode(file, levels)))
    with pytest.raises(baselines.RoundTripError, match="png did not decode"):
        baselines.png_codec(binary[:3], levels=2)


# ------------------------------------------------------------------------------------------------------ lossy


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_higher_quality_costs_more_bytes_and_gives_higher_psnr(codec, grey):
    results = baselines.rate_distortion_curve(codec, grey[:100], [10, 50, 90], ssim=True)
    assert [r.params["quality"] for r in results] == [10, 50, 90]
    sizes, psnrs, ssims = ([getattr(r, f) for r in results] for f in ("total_bytes", "psnr_db", "ssim"))
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert psnrs == sorted(psnrs) and psnrs[-1] > psnrs[0] + 5
    assert ssims == sorted(ssims) and 0 < ssims[0] < ssims[-1] <= 1
    assert all(r.name == codec and r.levels == 256 for r in results)


def test_psnr_is_measured_against_the_originals(grey):
    result = baselines.jpeg_codec(grey[:10], 75)
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(_jpeg(image, 75)))) for image in grey[:10]])
    mse = ((decoded.astype(float) - grey[:10]) ** 2).reshape(10, -1).mean(axis=1)
    assert result.psnr_db == pytest.approx(np.mean(10 * np.log10(255**2 / mse)), abs=1e-4)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------------ PCA


def test_pca_components_are_orthonormal_and_sorted(pca):
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(784), atol=1e-8)
    assert (np.diff(pca.variances) <= 1e-12).all() and pca.shape == (28, 28)


def test_pca_more_components_and_finer_steps_cost_bytes_and_buy_psnr(train, grey, pca):
    by_k = [baselines.pca_codec(train, grey, k, 0.1, pca=pca) for k in (5, 20, 60)]
    by_step = [baselines.pca_codec(train, grey, 30, step, pca=pca) for step in (0.4, 0.1, 0.02)]
    for results in (by_k, by_step):
        sizes, psnrs = [r.total_bytes for r in results], [r.psnr_db for r in results]
        assert sizes == sorted(sizes) and len(set(sizes)) == 3
        assert psnrs == sorted(psnrs) and len(set(psnrs)) == 3
    assert by_k[0].params == {"n_components": 5, "step": 0.1, "clamped_symbols": 0}


def test_pca_stream_decodes_to_the_same_symbols_and_images(train, grey, pca):
    coder = baselines.PCACoder.fit(train, 40, 0.05, pca=pca)
    symbols = coder.symbols(grey)
    assert symbols.dtype == np.int32 and symbols.shape == (len(grey), 40)
    stream = coder.encode(grey)
    np.testing.assert_array_equal(coder.decode_symbols(stream), symbols)
    np.testing.assert_array_equal(coder.decode(stream), coder.reconstruct(symbols))
    assert len(stream) % 4 == 0 and len(stream) > baselines.PCA_HEADER.size  # a 4-byte header + 32-bit words
    with pytest.raises(ValueError, match="32-bit words; got 7 bytes"):
        coder.decode_symbols(stream[:7])
    for p in coder.probabilities:  # Laplace smoothing: every symbol in range is codable
        assert p.min() > 0 and p.sum() == pytest.approx(1) and len(p) >= 2
    # the real rate is close to the ideal code length under the model (ANS costs a few bits per stream)
    ideal_bits = -sum(np.log2(p[s - lo]).sum() for p, s, lo in zip(coder.probabilities, symbols.T, coder.low))
    assert 8 * len(stream) == pytest.approx(ideal_bits, rel=0.01, abs=100)


def test_pca_clamps_symbols_unseen_in_training_and_still_codes_them(grey):
    train = data.get_split("train").images[:40]  # too few images to cover the test set's coefficient range
    pca = baselines.fit_pca(train)
    result = baselines.pca_codec(train, grey, 20, 0.02, pca=pca)
    assert result.params["clamped_symbols"] > 0 and result.psnr_db > 10
    coder = baselines.PCACoder.fit(train, 20, 0.02, pca=pca)
    np.testing.assert_array_equal(coder.decode_symbols(coder.encode(grey)), coder.symbols(grey))


def test_pca_reconstructs_low_rank_images_exactly_with_enough_components():
    train, test = low_rank_images(300, seed=0, corners=True), low_rank_images(50, seed=1)
    pca = baselines.fit_pca(train)
    assert pca.variances[3:].max() < 1e-9 * pca.variances[2]  # rank 3
    exact = baselines.pca_codec(train, test, 3, 0.001, pca=pca)
    assert exact.psnr_db == pytest.approx(100.0)  # evaluate.psnr's cap: zero error
    coder = baselines.PCACoder.fit(train, 3, 0.001, pca=pca)
    np.testing.assert_array_equal(coder.decode(coder.encode(test)), test)
    short = baselines.PCACoder.fit(train, 2, 0.001, pca=pca)  # one pattern short: not exact any more
    assert (short.decode(short.encode(test)) != test).mean() > 0.01


def test_pca_refuses_to_fit_without_training_images(grey):
    for nothing in (None, np.zeros((0, 28, 28), np.uint8)):
        with pytest.raises(ValueError, match="training images"):
            baselines.fit_pca(nothing)
        with pytest.raises(ValueError, match="training images"):
            baselines.pca_codec(nothing, grey, 10, 0.1)
    with pytest.raises(ValueError, match="at least 2 training images"):
        baselines.fit_pca(grey[:1])
    with pytest.raises(ValueError, match="needs train_images"):
        baselines.rate_distortion_curve("pca", grey, [(10, 0.1)])


def test_pca_rate_distortion_curve_keeps_order(train, grey, pca):
    settings = [(10, 0.2), (30, 0.05)]
    results = baselines.rate_distortion_curve("pca", grey[:50], settings, train_images=train, pca=pca)
    assert [(r.params["n_components"], r.params["step"]) for r in results] == [(10, 0.2), (30, 0.05)]
    assert results[0].bytes_per_image < results[1].bytes_per_image


@pytest.mark.parametrize(
    ("k", "step", "match"),
    [(0, 0.1, "n_components must be in 1..784"), (785, 0.1, "n_components"), (10, 0.0, "step must be a positive"),
     (10, float("nan"), "step"), (10, 1e-7, "quantization bins")],
)  # fmt: skip
def test_pca_settings_are_validated(train, grey, pca, k, step, match):
    with pytest.raises(ValueError, match=match):
        baselines.pca_codec(train, grey, k, step, pca=pca)


# ------------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("name", baselines.LOSSLESS_CODECS)
def test_lossless_codecs_refuse_bad_images(name, grey):
    codec = LOSSLESS[name]
    with pytest.raises(TypeError, match="uint8.*got dtype float32"):
        codec(grey[:2].astype(np.float32) / 255, levels=256)
    with pytest.raises(ValueError, match=r"shape \(N, H, W\).*\(2, 784\)"):
        codec(grey[:2].reshape(2, 784), levels=256)
    with pytest.raises(ValueError, match="levels=2 means binary.*up to 255.*levels=256"):
        codec(grey[:2], levels=2)
    with pytest.raises(ValueError, match="levels must be 2 .* or 256"):
        codec(grey[:2], levels=255)
    with pytest.raises(ValueError, match="N, H, W >= 1"):
        codec(grey[:0], levels=256)


@pytest.mark.parametrize("codec", [baselines.jpeg_codec, baselines.webp_lossy_codec])
def test_lossy_codecs_refuse_bad_qualities_and_images(codec, grey):
    for quality in (0, 101, -5):
        with pytest.raises(ValueError, match="quality must be in 1..100"):
            codec(grey[:2], quality)
    for quality in (50.0, True, "high"):
        with pytest.raises(TypeError, match="quality must be an int"):
            codec(grey[:2], quality)
    with pytest.raises(TypeError, match="uint8"):
        codec(grey[:2].astype(np.int64), 50)
    with pytest.raises(ValueError, match="shape"):
        codec(grey[:2, None], 50)


def test_unknown_lossy_codec_names_the_choices(grey):
    with pytest.raises(ValueError, match="unknown lossy codec 'png'; choose one of jpeg, webp, pca"):
        baselines.rate_distortion_curve("png", grey, [50])
