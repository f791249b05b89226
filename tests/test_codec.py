"""Tests of vae_utils.codec: exact bits-back round trips, rates against the -ELBO, the lossy codec, the file
format under truncation, bit flips and crafted headers, property-based fuzzing of the reader, and the CLI."""

from __future__ import annotations

import dataclasses
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vae_utils import codec, data, evaluate
from vae_utils.elbo import elbo, likelihood_mean
from vae_utils.model import ConvVAE, load_checkpoint, make_checkpoint, save_atomic

SHIPPED_BINARIZED = codec.DEFAULT_CHECKPOINTS["binarized"]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The codec runs torch on one thread anyway; the training and -ELBO here do too, so that a busy 2-core
    machine is not oversubscribed (two threads each can make these tests several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_tiny(likelihood: str, steps: int, seed: int = 0) -> ConvVAE:
    """A small ConvVAE trained for a few dozen steps: good enough that its -ELBO is far below the untrained one."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ConvVAE(latent_dim=8, channels=(8, 16), hidden_dim=32, likelihood=likelihood, n_components=2)
    x = data.to_tensor(data.load_mnist().x_train[:2048])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = x[torch.randint(len(x), (64,), generator=generator)]
        if likelihood == "bernoulli":
            batch = torch.bernoulli(batch, generator=generator)
        loss = -elbo(model, batch, generator=generator)["elbo"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def binary_model():
    return train_tiny("bernoulli", steps=100)


@pytest.fixture(scope="module")
def mixture_model():
    return train_tiny("logistic_mixture", steps=60)


@pytest.fixture(scope="module")
def binary_images():
    return data.binarize_stochastic(data.load_mnist().x_test[:300], data.STATIC_BINARIZATION_SEED)


@pytest.fixture(scope="module")
def grey_images():
    return data.load_mnist().x_test[:200]


@pytest.fixture(scope="module")
def small_files(binary_model, binary_images):
    """Two small valid files (lossless and lossy, 3 images each) for the corruption tests."""
    x = binary_images[:3]
    return {mode: codec.compress(binary_model, x, mode).data for mode in ("lossless", "lossy")}, x


def nelbo_bits(model, images: np.ndarray, seeds: int = 8) -> float:
    """The dataset's -ELBO in bits, summed over images, each averaged over ``seeds`` draws of z."""
    x = data.to_tensor(images, max_value=1 if model.likelihood == "bernoulli" else 255)
    nats = torch.stack([evaluate.per_image_nelbo(model, x, seed=s)["nelbo"] for s in range(seeds)]).mean(0)
    return nats.sum().item() / math.log(2)


def recrc(blob: bytes) -> bytes:
    """The same bytes with a valid CRC: a crafted file that passes the checksum."""
    return blob[:-4] + struct.pack("<I", zlib.crc32(blob[:-4]))


def mutated(blob: bytes, draw) -> bytes:
    """1 to 4 random byte edits (set, insert, delete) of ``blob``, its CRC then fixed or not."""
    blob = bytearray(blob)
    for _ in range(draw.draw(st.integers(1, 4), label="edits")):
        position = draw.draw(st.integers(0, len(blob) - 1), label="position")
        action = draw.draw(st.sampled_from(["set", "insert", "delete"]), label="action")
        if action == "set":
            blob[position] = draw.draw(st.integers(0, 255), label="byte")
        elif action == "insert":
            blob.insert(position, draw.draw(st.integers(0, 255), label="byte"))
        elif len(blob) > 1:
            del blob[position]
    return recrc(bytes(blob)) if draw.draw(st.booleans(), label="fix crc") and len(blob) >= 4 else bytes(blob)


def with_header(blob: bytes, **fields) -> bytes:
    """A valid file's payload under a header with some fields changed, CRC recomputed."""
    header = dataclasses.replace(codec.read_header(blob), **fields)
    return recrc(header.pack() + blob[codec.HEADER_BYTES :])


# ------------------------------------------------------------------------------------------ the latent buckets


@pytest.mark.parametrize("bits", [4, 8, 12])
def test_latent_grid_has_equal_prior_mass(bits):
    edges, centres = codec.latent_grid(bits)
    n = 2**bits
    assert edges.shape == (n + 1,) and centres.shape == (n,) and centres.dtype == torch.float32
    assert edges[0] == -math.inf and edges[-1] == math.inf and (edges.diff() > 0).all()
    torch.testing.assert_close(torch.special.ndtr(edges).diff(), torch.full((n,), 1 / n, dtype=torch.float64))
    assert ((centres.double() > edges[:-1]) & (centres.double() < edges[1:])).all()


def test_posterior_bucket_probs():
    starts, probs = codec.posterior_bucket_probs(torch.zeros(1, 3), torch.zeros(1, 3), 8)  # q = prior: uniform
    assert starts.tolist() == [0, 0, 0] and [p.shape for p in probs] == [(256,)] * 3 and probs[0].dtype == np.float64
    np.testing.assert_allclose(np.stack(probs), 1 / 256, rtol=1e-6)
    edges, _ = codec.latent_grid(10)
    starts, probs = codec.posterior_bucket_probs(torch.tensor([[1.0, -2.5]]), torch.tensor([[-16.0, -3.0]]), 10)
    narrow, wide = probs
    assert 2 <= len(narrow) < 10 < len(wide) < 1024  # a window of about +-6 sigma, not all 1024 buckets
    best = starts[0] + narrow.argmax()
    assert edges[best] <= 1.0 <= edges[best + 1] and narrow.max() > 0.9  # sigma << bucket: mu's bucket has it all
    for start, p in zip(starts, probs):
        assert 0 <= start and start + len(p) <= 1024 and p.sum() == pytest.approx(1, abs=1e-8)
        centre = start + np.sum(np.arange(len(p)) * p)  # the mean bucket sits at the posterior mean
        assert edges[int(centre) - 1] <= (1.0 if len(p) < 10 else -2.5) <= edges[int(centre) + 2]


# ------------------------------------------------------------------------------------------------- lossless


@pytest.mark.parametrize("kind", ["binarized", "8bit"])
def test_lossless_round_trip_is_exact_and_the_rate_is_the_elbo(kind, binary_model, mixture_model, binary_images,
                                                               grey_images):  # fmt: skip
    model, images = (binary_model, binary_images) if kind == "binarized" else (mixture_model, grey_images)
    result = codec.compress(model, images)
    assert result.header.mode == ("lossless-binary" if kind == "binarized" else "lossless-8bit")
    assert np.array_equal(codec.decompress(model, result.data), images)
    # the rate, counted from the real bytes, is the -ELBO (1%), plus the initial bits paid once per file
    target = nelbo_bits(model, images)
    assert result.net_bits.sum() == pytest.approx(target, rel=0.01)
    assert 8 * result.payload_bytes == pytest.approx(target + result.initial_bits, rel=0.01)
    assert result.payload_bytes * 8 == result.net_bits.sum() + result.initial_bits
    assert len(result.data) == codec.HEADER_BYTES + result.payload_bytes + 4 == result.header.file_bytes
    assert result.bits_per_dim == pytest.approx(8 * len(result.data) / (len(images) * 784))


def test_lossless_is_deterministic_and_independent_of_torch_threads(binary_model, binary_images):
    x = binary_images[:20]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = codec.compress(binary_model, x).data
        torch.set_num_threads(1)
        second = codec.compress(binary_model, x).data
    finally:
        torch.set_num_threads(threads)
    assert first == second
    assert torch.get_num_threads() == threads  # compress restores the setting


def test_initial_bits_are_paid_once_and_amortize(binary_model, binary_images):
    result = codec.compress(binary_model, binary_images)
    # the first image borrows about latent_bits bits per latent dimension (less where q is narrow)
    assert 0 < result.initial_bits <= binary_model.latent_dim * codec.DEFAULT_LATENT_BITS + 96
    per_image = result.bits_per_image_first_n
    overhead = per_image - np.cumsum(result.net_bits) / np.arange(1, len(per_image) + 1)
    np.testing.assert_allclose(overhead, result.initial_bits / np.arange(1, len(per_image) + 1))
    assert overhead[-1] < 0.01 * result.net_bits.mean() < overhead[0]  # > 1% for one image, < 1% for 300
    # a file of the first image alone costs what the summary predicts for n = 1
    alone = codec.compress(binary_model, binary_images[:1])
    assert 8 * alone.payload_bytes == pytest.approx(per_image[0], abs=64)


def test_latent_bits_setting(binary_model, binary_images):
    x = binary_images[:10]
    for bits in (6, 10):
        result = codec.compress(binary_model, x, latent_bits=bits)
        assert result.header.latent_bits == bits
        assert np.array_equal(codec.decompress(binary_model, result.data), x)


# ---------------------------------------------------------------------------------------------------- lossy


@pytest.mark.parametrize("kind", ["binarized", "8bit"])
def test_lossy_round_trip_gives_the_decoders_mean(kind, binary_model, mixture_model, binary_images, grey_images):
    model, images = (binary_model, binary_images[:40]) if kind == "binarized" else (mixture_model, grey_images[:40])
    step = 0.25
    result = codec.compress(model, images, "lossy", step=step)
    decoded = codec.decompress(model, result.data)
    expected = []
    with torch.no_grad():
        for image in images:  # the reference: the decoder's mean at the quantized encoder mean, computed here
            x = data.to_tensor(image[None], max_value=1 if kind == "binarized" else 255)
            z_hat = step * torch.round(model.encode(x)[0].double() / step)
            mean = likelihood_mean(model.likelihood, model.decode(z_hat.float()))
            expected.append((255 * mean.double()).round().numpy().astype(np.uint8)[0, 0])
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, np.stack(expected))
    assert result.header.step == step and result.initial_bits >= 32 * codec.LOSSY_CHECK_WORDS - 32


def test_rate_distortion_curve(grey_images, mixture_model):
    rows = codec.rate_distortion(mixture_model, grey_images[:30], steps=[0.05, 0.2, 1.0, 4.0])
    assert [row["step"] for row in rows] == [0.05, 0.2, 1.0, 4.0]
    sizes = [row["bytes_per_image"] for row in rows]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]  # coarser steps, fewer bytes
    assert rows[0]["psnr_db"] > rows[-1]["psnr_db"]  # and a blurrier reconstruction
    assert all(row["bits_per_dim"] == pytest.approx(8 * row["bytes_per_image"] / 784) for row in rows)


# ------------------------------------------------------------------------------------------------ bad input


def test_compress_checks_its_input(binary_model, mixture_model, grey_images):
    with pytest.raises(ValueError, match="bernoulli: it codes binary images.*Binarize"):
        codec.compress(binary_model, grey_images[:2])
    with pytest.raises(TypeError, match="uint8 numpy array"):
        codec.compress(mixture_model, grey_images[:2].astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\), got \(2, 32, 32\).*resize"):
        codec.compress(mixture_model, np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="mode must be 'lossless' or 'lossy'"):
        codec.compress(mixture_model, grey_images[:2], "lossles")
    with pytest.raises(ValueError, match="latent_bits must be an int in 4..16"):
        codec.compress(mixture_model, grey_images[:2], latent_bits=20)
    with pytest.raises(ValueError, match="step must be a number"):
        codec.compress(mixture_model, grey_images[:2], "lossy", step=0)
    with pytest.raises(ValueError, match="float32"):
        codec.compress(ConvVAE(latent_dim=2, channels=(2, 2), hidden_dim=4).double(), grey_images[:2] // 255)
    with pytest.raises(TypeError, match="bytes"):
        codec.read_header("VAEC")


def test_wrong_model_is_refused_naming_both_ids(small_files, mixture_model):
    files, _ = small_files
    other = train_tiny("bernoulli", steps=1, seed=1)
    for blob in files.values():
        stored = codec.read_header(blob).model_id.hex()
        with pytest.raises(
            codec.CodecError, match=f"model {stored}.*given model is {codec.model_id(other)[:16].hex()}"
        ):
            codec.decompress(other, blob)
        with pytest.raises(codec.CodecError, match="compressed with model"):
            codec.decompress(mixture_model, blob)


def test_model_id_depends_on_the_weights_only(binary_model, tmp_path):
    save_atomic(make_checkpoint(binary_model, epoch=1), tmp_path / "a.pt")
    save_atomic(make_checkpoint(binary_model, epoch=2, note="other metadata"), tmp_path / "b.pt")
    ids = {codec.model_id(load_checkpoint(tmp_path / name)[0]) for name in ("a.pt", "b.pt")}
    assert ids == {codec.model_id(binary_model)} and len(next(iter(ids))) == 32
    changed = load_checkpoint(tmp_path / "a.pt")[0]
    with torch.no_grad():
        changed.decoder[0].bias[0] += 1e-6
    assert codec.model_id(changed) != codec.model_id(binary_model)


# ----------------------------------------------------------------------------------------- corrupted files


@pytest.mark.parametrize("mode", ["lossless", "lossy"])
def test_every_truncation_is_a_codec_error(mode, small_files, binary_model):
    blob = small_files[0][mode]
    for n in range(len(blob)):
        with pytest.raises(codec.CodecError, match="truncated|empty"):
            codec.decompress(binary_model, blob[:n])
    with pytest.raises(codec.CodecError, match="after its end"):
        codec.decompress(binary_model, blob + b"\0")


@pytest.mark.parametrize("mode", ["lossless", "lossy"])
def test_every_bit_flip_is_a_codec_error(mode, small_files, binary_model):
    blob = bytearray(small_files[0][mode])
    for bit in range(8 * len(blob)):
        blob[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(codec.CodecError):
            codec.decompress(binary_model, bytes(blob))
        blob[bit // 8] ^= 1 << (bit % 8)


@pytest.mark.parametrize("mode", ["lossless", "lossy"])
def test_payload_bit_flips_with_a_valid_crc_are_caught_by_the_stream(mode, small_files, binary_model):
    """Past the CRC, the stream checks itself: decoding must end in exactly the initial words."""
    blob = bytearray(small_files[0][mode])
    stride = 7 if mode == "lossless" else 1  # every 7th bit of the longer lossless payload keeps this fast
    for bit in range(8 * codec.HEADER_BYTES, 8 * (len(blob) - 4), stride):
        blob[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(codec.CodecError, match="corrupted"):
            codec.decompress(binary_model, recrc(bytes(blob)))
        blob[bit // 8] ^= 1 << (bit % 8)


def test_wrong_magic_version_and_mode(small_files, binary_model):
    blob = small_files[0]["lossless"]
    with pytest.raises(codec.CodecError, match="not a vae_utils codec file.*b'PNG"):
        codec.read_header(b"PNG!" + blob[4:])
    with pytest.raises(codec.CodecError, match="format version 3, but this vae_utils reads versions 1 to 2"):
        codec.read_header(recrc(blob[:4] + b"\x03" + blob[5:]))
    with pytest.raises(codec.CodecError, match="unknown mode 7"):
        codec.read_header(recrc(blob[:5] + b"\x07" + blob[6:]))
    lossless_as_lossy = recrc(blob[:5] + b"\x02" + blob[6:])
    with pytest.raises(codec.CodecError):
        codec.decompress(binary_model, lossless_as_lossy)


@pytest.mark.parametrize("mode", ["lossless", "lossy"])
def test_crafted_headers_with_a_valid_crc_are_refused(mode, small_files, binary_model):
    """Edited fields pass the CRC but change the initial words, so decoding cannot end where it must."""
    blob = small_files[0][mode]
    header = codec.read_header(blob)
    edits = [{"n_images": 2}, {"n_images": 4}, {"n_images": codec.MAX_IMAGES}]
    if mode == "lossless":
        seeds = [{"seed_words": header.seed_words + 1}, {"stripped_words": header.stripped_words - 1}]
        edits += [{"latent_bits": 11}, *seeds, {"stripped_words": 0}]
    else:
        edits += [{"step": np.nextafter(header.step, 1.0)}, {"step": 0.51}]  # same symbol range, other bins
    for edit in edits:
        with pytest.raises(codec.CodecError, match="corrupted"):
            codec.decompress(binary_model, with_header(blob, **edit))
    checks = [
        ({"n_images": 0}, "1..100000"),
        ({"n_images": codec.MAX_IMAGES + 1}, "1..100000"),
        ({"height": 32}, "28x28"),
    ]
    if mode == "lossy":
        checks += [({"step": float("nan")}, "outside"), ({"step": 9.0}, "outside"), ({"symbol_range": 17}, "ceil")]
    else:
        checks += [({"latent_bits": 30}, "outside"), ({"stripped_words": header.seed_words + 1}, "out of range")]
    for edit, match in checks:
        with pytest.raises(codec.CodecError, match=match):
            codec.read_header(with_header(blob, **edit))


def test_a_hostile_header_cannot_make_it_allocate_or_spin(small_files, binary_model):
    """The most images allowed and a one-word payload: refused at once (nothing large allocated, no long loop)."""
    blob = small_files[0]["lossless"]
    header = dataclasses.replace(codec.read_header(blob), n_images=codec.MAX_IMAGES, payload_bytes=4)
    hostile = recrc(header.pack() + b"\x01\x02\x03\x04" + b"\0\0\0\0")
    with pytest.raises(codec.CodecError, match="ran out of bits"):
        codec.decompress(binary_model, hostile)
    huge = dataclasses.replace(header, payload_bytes=2**32 - 4).pack()
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.decompress(binary_model, huge + blob[codec.HEADER_BYTES :])


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(binary_model, blob):
    with pytest.raises(codec.CodecError):
        codec.decompress(binary_model, blob)
    with pytest.raises(codec.CodecError):
        codec.decompress(binary_model, codec.MAGIC + bytes([codec.FORMAT_VERSION]) + blob)


@FUZZ
@given(st.data())
def test_fuzz_mutations_of_a_valid_file(small_files, binary_model, draw):
    """Random edits (and the CRC fixed or not): the original images back, or a CodecError; nothing else."""
    files, images = small_files
    candidate = mutated(files[draw.draw(st.sampled_from(sorted(files)), label="mode")], draw)
    try:
        decoded = codec.decompress(binary_model, candidate)
    except codec.CodecError:
        return
    assert candidate in files.values(), "a changed file decoded without an error"
    if candidate == files["lossless"]:
        assert np.array_equal(decoded, images)


@FUZZ
@given(st.data())
def test_fuzz_header_fields_with_a_valid_crc(small_files, binary_model, draw):
    """Any header values (CRC recomputed): a CodecError unless the header is the original one."""
    files, images = small_files
    blob = files["lossless"]
    fields = list(struct.unpack_from("<4sBB16sIHH12sI", blob))
    index = draw.draw(st.sampled_from([1, 2, 4, 5, 6, 7, 8]), label="field")
    if index == 7:
        fields[7] = draw.draw(st.binary(min_size=12, max_size=12), label="params")
    else:
        fields[index] = draw.draw(
            st.integers(0, 2 ** {1: 8, 2: 8, 4: 32, 5: 16, 6: 16, 8: 32}[index] - 1), label="value"
        )
    candidate = recrc(struct.pack("<4sBB16sIHH12sI", *fields) + blob[codec.HEADER_BYTES :])
    if candidate == blob:
        assert np.array_equal(codec.decompress(binary_model, candidate), images)
    else:
        with pytest.raises(codec.CodecError):
            codec.decompress(binary_model, candidate)


# --------------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def checkpoints(binary_model, mixture_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {"binarized": folder / "binary" / "best.pt", "8bit": folder / "grey" / "best.pt"}
    save_atomic(make_checkpoint(binary_model), paths["binarized"])
    save_atomic(make_checkpoint(mixture_model), paths["8bit"])
    return folder, paths


def write_pngs(folder: Path, images: np.ndarray) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"in{i}.png") for i in range(len(images))]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    return paths


def read_pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_cli_round_trip_on_png_files(tmp_path, checkpoints, binary_images, capsys, monkeypatch):
    folder, paths = checkpoints
    binary_png = binary_images[:5] * np.uint8(255)  # binarized images as 0/255 PNGs
    inputs = write_pngs(tmp_path / "in", binary_png)
    out = tmp_path / "out.vae"
    command = [sys.executable, "-m", "vae_utils.codec", "compress", *inputs, "-o", str(out), "--checkpoint",
               str(paths["binarized"])]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "lossless-binary: 5 images" in result.stdout
    monkeypatch.setattr(codec, "CHECKPOINTS", folder)  # decompress finds the checkpoint by its model id
    assert codec.main(["decompress", str(out), "-o", str(tmp_path / "dec")]) == 0
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert np.array_equal(read_pngs(tmp_path / "dec"), binary_png)
    capsys.readouterr()
    assert codec.main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert (
        "lossless-binary" in info
        and "n_images" in info
        and codec.model_id(load_checkpoint(paths["binarized"])[0])[:16].hex() in info
    )


def test_cli_grey_and_lossy(tmp_path, checkpoints, grey_images, capsys):
    _, paths = checkpoints
    np.save(tmp_path / "grey.npy", grey_images[:4])
    out = tmp_path / "grey.vae"
    args = ["--checkpoint", str(paths["8bit"]), "--no-progress"]
    assert codec.main(["compress", str(tmp_path / "grey.npy"), "-o", str(out), *args]) == 0
    assert codec.main(["decompress", str(out), "-o", str(tmp_path / "dec"), *args]) == 0
    assert np.array_equal(read_pngs(tmp_path / "dec"), grey_images[:4])
    assert codec.main(["compress", str(tmp_path / "grey.npy"), "-o", str(out), "--lossy", "--step", "0.5", *args]) == 0
    assert "lossy: 4 images" in capsys.readouterr().out
    assert codec.main(["decompress", str(out), "-o", str(tmp_path / "lossy"), *args]) == 0
    assert read_pngs(tmp_path / "lossy").shape == (4, 28, 28)


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, checkpoints, capsys, monkeypatch, small_files):
    _, paths = checkpoints
    monkeypatch.setattr(codec, "CHECKPOINTS", tmp_path / "none")  # no shipped checkpoints to fall back on
    monkeypatch.setattr(
        codec, "DEFAULT_CHECKPOINTS", {k: tmp_path / "none" / k / "best.pt" for k in ("binarized", "8bit")}
    )

    def error(*argv) -> str:
        assert codec.main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        return err

    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "big.png")
    assert "28x28" in error("compress", tmp_path / "big.png", "-o", tmp_path / "x.vae")
    assert "resize((28, 28))" in error("compress", tmp_path / "big.png", "-o", tmp_path / "x.vae")
    colour = np.zeros((28, 28, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "red.png")
    assert "colour" in error("compress", tmp_path / "red.png", "-o", tmp_path / "x.vae", "--checkpoint", paths["8bit"])
    grey_rgb = np.repeat(np.arange(784, dtype=np.uint8).reshape(28, 28)[..., None], 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "grey_rgb.png")  # grey pixels stored as RGB are accepted
    assert codec.main(["compress", str(tmp_path / "grey_rgb.png"), "-o", str(tmp_path / "g.vae"),
                       "--checkpoint", str(paths["8bit"])]) == 0  # fmt: skip
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 28, 28), np.uint8), b=np.zeros((2, 28, 28), np.uint8))
    assert "--key" in error("compress", tmp_path / "two.npz", "-o", tmp_path / "x.vae")
    np.save(tmp_path / "float.npy", np.zeros((2, 28, 28), np.float32))
    assert "255" in error("compress", tmp_path / "float.npy", "-o", tmp_path / "x.vae")
    assert "no such file" in error("compress", tmp_path / "missing.png", "-o", tmp_path / "x.vae")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    assert "cannot read" in error("compress", tmp_path / "junk.png", "-o", tmp_path / "x.vae")
    assert "no checkpoint at" in error("compress", tmp_path / "grey_rgb.png", "-o", tmp_path / "x.vae")
    blob = small_files[0]["lossless"]
    (tmp_path / "bad.vae").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    assert "checksum mismatch" in error(
        "decompress", tmp_path / "bad.vae", "-o", tmp_path / "d", "--checkpoint", paths["binarized"]
    )
    (tmp_path / "good.vae").write_bytes(blob)
    assert "no checkpoint under" in error("decompress", tmp_path / "good.vae", "-o", tmp_path / "d")
    assert "given model is" in error(
        "decompress", tmp_path / "good.vae", "-o", tmp_path / "d", "--checkpoint", paths["8bit"]
    )
    assert "No such file" in error("info", tmp_path / "missing.vae")
    (tmp_path / "short.vae").write_bytes(blob[:10])
    assert "truncated" in error("info", tmp_path / "short.vae")


# -------------------------------------------------------------------------------------- the shipped model


@pytest.mark.skipif(not SHIPPED_BINARIZED.is_file(), reason="checkpoints/conv_binarized/best.pt not trained yet")
def test_shipped_binarized_checkpoint_codes_at_its_elbo(binary_images):
    model, _ = load_checkpoint(SHIPPED_BINARIZED)
    images = binary_images[:150]
    result = codec.compress(model, images)
    assert np.array_equal(codec.decompress(model, result.data), images)
    assert 8 * result.payload_bytes == pytest.approx(nelbo_bits(model, images) + result.initial_bits, rel=0.01)


# ------------------------------------------------- learned priors and latent hierarchies (Chapter 8)


from vae_utils.codec import hierarchy  # noqa: E402
from vae_utils.model import HierarchicalVAE  # noqa: E402


def deep_model(kind: str, seed: int = 0):
    """Small untrained models of the three deep kinds (fast; their -ELBO is still a fine reference)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        small = {"channels": (8, 16), "hidden_dim": 32}
        if kind == "hierarchy":
            return HierarchicalVAE(latent_dims=(8, 4, 3), **small).eval()
        return ConvVAE(latent_dim=8, prior=kind, prior_components=6, **small).eval()


def stream_round_trip(model, images: np.ndarray, order: str, key: bytes = b"test"):
    symbols = images.reshape(len(images), -1).astype(np.int32)
    seed = codec.initial_words(key, hierarchy.seed_words(model))
    words, stripped, net_bits = hierarchy.encode_stream(model, symbols, 12, order, key, seed)
    decoded = hierarchy.decode_stream(model, words[stripped:], len(images), 12, order, key, seed, stripped)
    initial = 32.0 * (len(words) - stripped) - net_bits.sum()
    return decoded, net_bits, initial, (words[stripped:], stripped)


@pytest.mark.parametrize("kind", ["hierarchy", "vamp", "mog"])
@pytest.mark.parametrize("order", hierarchy.ORDERS)
def test_deep_streams_round_trip_at_the_elbo(kind, order, binary_images):
    model, images = deep_model(kind), binary_images[:30]
    decoded, net_bits, initial, _ = stream_round_trip(model, images, order)
    assert np.array_equal(decoded.reshape(images.shape), images)
    assert net_bits.sum() == pytest.approx(nelbo_bits(model, images), rel=0.01)
    assert 0 < initial < 32 * hierarchy.seed_words(model)


def test_bitswap_borrows_fewer_initial_bits_than_bbans(binary_images):
    images = binary_images[:3]
    initial = {}
    for dims in ((8, 6), (8, 6, 6), (8, 6, 6, 6)):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = HierarchicalVAE(latent_dims=dims, channels=(8, 16), hidden_dim=32).eval()
        for order in hierarchy.ORDERS:
            initial[len(dims), order] = stream_round_trip(model, images, order)[2]
    for layers in (2, 3, 4):
        assert initial[layers, "bitswap"] < initial[layers, "bbans"]
    # BB-ANS borrows every layer's bits: each extra layer of 6 dimensions adds tens of bits; Bit-Swap does not grow
    assert initial[4, "bbans"] - initial[2, "bbans"] > 40
    assert abs(initial[4, "bitswap"] - initial[2, "bitswap"]) < 40


def test_component_posterior_is_the_exact_mixture_posterior():
    model = deep_model("mog")
    components = model.prior_components()
    buckets = np.array([100, 2000, 4095, 0, 3000, 1500, 2048, 7], dtype=np.int32)
    q = hierarchy.component_posterior(buckets, components, 12)
    edges, _ = codec.latent_grid(12)
    lo, hi = edges[buckets], edges[buckets + 1]
    log_w, mu, logvar = (t.double().detach() for t in components)
    normal = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    mass = (normal.cdf(hi) - normal.cdf(lo)).clamp(min=1e-300).log().sum(1)
    np.testing.assert_allclose(q, torch.softmax(log_w + mass, 0).numpy(), rtol=1e-6, atol=1e-12)
    assert q.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["hierarchy", "vamp"])
def test_a_corrupted_deep_stream_is_refused(kind, binary_images):
    model, images = deep_model(kind), binary_images[:4]
    _, _, _, (words, stripped) = stream_round_trip(model, images, "bitswap")
    seed = codec.initial_words(b"test", hierarchy.seed_words(model))
    for flip in (0, len(words) // 2, len(words) - 1):
        bad = words.copy()
        bad[flip] ^= np.uint32(1 << 7)
        with pytest.raises((codec.CodecError, ValueError)):
            decoded = hierarchy.decode_stream(model, bad, 4, 12, "bitswap", b"test", seed, stripped)
            assert np.array_equal(decoded.reshape(images.shape), images)  # silent garbage is a failure too
            raise AssertionError("a corrupted stream decoded to the right images")


# ------------------------------------------------ the -deep modes of the file format (format version 2)


@pytest.fixture(scope="module")
def deep_files(binary_images):
    """Small valid -deep files, 3 images each: a hierarchy in the Bit-Swap order, a VampPrior in the BB-ANS order."""
    x = binary_images[:3]
    models = {"hierarchy": deep_model("hierarchy"), "vamp": deep_model("vamp")}
    files = {"hierarchy": codec.compress(models["hierarchy"], x).data,
             "vamp": codec.compress(models["vamp"], x, order="bbans").data}  # fmt: skip
    return files, models, x


def with_deep_header(blob: bytes, **fields) -> bytes:
    """A -deep file's payload under a header with some fields changed, CRC recomputed."""
    header = codec.read_header(blob)
    edited = dataclasses.replace(header, **fields)
    return recrc(edited.pack() + blob[header.header_bytes :])


@pytest.mark.parametrize("kind", ["hierarchy", "vamp"])
@pytest.mark.parametrize("order", codec.DEEP_ORDERS)
def test_deep_files_round_trip_at_the_elbo(kind, order, binary_images):
    model, images = deep_model(kind), binary_images[:30]
    result = codec.compress(model, images, order=order)
    header = result.header
    assert (header.mode, header.version, header.order, header.layers) == ("lossless-binary-deep", 2, order, 3 if kind == "hierarchy" else 2)
    assert np.array_equal(codec.decompress(model, result.data), images)
    assert result.net_bits.sum() == pytest.approx(nelbo_bits(model, images), rel=0.01)
    assert 8 * result.payload_bytes == result.net_bits.sum() + result.initial_bits
    info = header.describe()
    assert info["order"] == order and info["layers"] == header.layers and info["mode"] == "lossless-binary-deep"


def test_order_is_refused_where_it_does_not_apply(binary_model, binary_images):
    with pytest.raises(ValueError, match="order applies to lossless coding of a model with a learned prior"):
        codec.compress(binary_model, binary_images[:2], order="bitswap")
    with pytest.raises(ValueError, match="order applies to lossless coding, not lossy"):
        codec.compress(deep_model("vamp"), binary_images[:2], "lossy", order="bbans")
    with pytest.raises(ValueError, match="order must be one of bitswap, bbans"):
        codec.compress(deep_model("vamp"), binary_images[:2], order="swap")


@pytest.mark.parametrize("kind", ["hierarchy", "vamp"])
def test_every_truncation_and_bit_flip_of_a_deep_file_is_a_codec_error(kind, deep_files):
    files, models, _ = deep_files
    blob, model = files[kind], models[kind]
    for n in range(len(blob)):
        with pytest.raises(codec.CodecError, match="truncated|empty"):
            codec.decompress(model, blob[:n])
    flipped = bytearray(blob)
    for bit in range(0, 8 * len(blob), 3):
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(codec.CodecError):
            codec.decompress(model, bytes(flipped))
        flipped[bit // 8] ^= 1 << (bit % 8)


@pytest.mark.parametrize("kind", ["hierarchy", "vamp"])
def test_deep_payload_bit_flips_with_a_valid_crc_are_caught_by_the_stream(kind, deep_files):
    files, models, _ = deep_files
    blob, model = bytearray(files[kind]), models[kind]
    start = codec.read_header(bytes(blob)).header_bytes
    for bit in range(8 * start, 8 * (len(blob) - 4), 5):
        blob[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(codec.CodecError, match="corrupted|ran out"):
            codec.decompress(model, recrc(bytes(blob)))
        blob[bit // 8] ^= 1 << (bit % 8)


def test_crafted_deep_headers_are_refused(deep_files):
    files, models, _ = deep_files
    blob, model = files["hierarchy"], models["hierarchy"]
    header = codec.read_header(blob)
    for edit in ({"order": "bbans"}, {"latent_bits": 11}, {"n_images": 4}, {"seed_words": header.seed_words + 1},
                 {"stripped_words": header.stripped_words - 1}):  # fmt: skip
        with pytest.raises(codec.CodecError, match="corrupted|ran out"):
            codec.decompress(model, with_deep_header(blob, **edit))
    with pytest.raises(codec.CodecError, match="codes 2 latent layers, but the given model has 3"):
        codec.decompress(model, with_deep_header(blob, layers=2))
    checks = [({"layers": 1}, "2..16"), ({"layers": 17}, "2..16"), ({"latent_bits": 3}, "outside"),
              ({"stripped_words": header.seed_words + 1}, "out of range"), ({"arithmetic": "integer"}, "float arithmetic")]  # fmt: skip
    for edit, match in checks:
        with pytest.raises(codec.CodecError, match=match):
            codec.read_header(with_deep_header(blob, **edit))
    params_at = 34  # the version 2 header's parameter block
    for offset, value, match in ((1, 2, "unknown order 2"), (3, 1, "byte 3 zero")):
        edited = bytearray(blob)
        edited[params_at + offset] = value
        with pytest.raises(codec.CodecError, match=match):
            codec.read_header(recrc(bytes(edited)))
    as_version_1 = bytearray(blob)
    as_version_1[4] = 1
    with pytest.raises(codec.CodecError):
        codec.decompress(model, recrc(bytes(as_version_1)))
    with pytest.raises(codec.CodecError, match="compressed with model"):  # a plain model: another model id
        codec.decompress(ConvVAE(latent_dim=8, channels=(8, 16), hidden_dim=32).eval(), blob)


@FUZZ
@given(st.data())
def test_fuzz_mutations_of_a_deep_file(deep_files, draw):
    """Random edits of a -deep file (CRC fixed or not): the original images back, or a CodecError."""
    files, models, images = deep_files
    kind = draw.draw(st.sampled_from(sorted(files)), label="kind")
    candidate = mutated(files[kind], draw)
    try:
        decoded = codec.decompress(models[kind], candidate)
    except codec.CodecError:
        return
    assert candidate == files[kind], "a changed file decoded without an error"
    assert np.array_equal(decoded, images)


@FUZZ
@given(st.data())
def test_fuzz_deep_parameter_blocks_with_a_valid_crc(deep_files, draw):
    """Any bytes in a -deep header's parameter block (CRC recomputed): a CodecError unless it is the original."""
    files, models, images = deep_files
    blob = files["hierarchy"]
    params = draw.draw(st.binary(min_size=12, max_size=12), label="params")
    candidate = recrc(blob[:34] + params + blob[46:])
    if candidate == blob:
        assert np.array_equal(codec.decompress(models["hierarchy"], candidate), images)
    else:
        with pytest.raises(codec.CodecError):
            codec.decompress(models["hierarchy"], candidate)


def test_cli_codes_a_hierarchy_in_either_order_and_info_shows_it(tmp_path, binary_images, checkpoints, capsys):
    model = deep_model("hierarchy")
    path = tmp_path / "hvae" / "best.pt"
    save_atomic(make_checkpoint(model), path)
    np.save(tmp_path / "x.npy", binary_images[:3] * np.uint8(255))
    for order in codec.DEEP_ORDERS:
        out = tmp_path / f"{order}.vae"
        assert codec.main(["compress", str(tmp_path / "x.npy"), "-o", str(out), "--checkpoint", str(path),
                           "--order", order, "--no-progress"]) == 0  # fmt: skip
        assert f"lossless-binary-deep, {order} order: 3 images" in capsys.readouterr().out
        assert codec.main(["info", str(out)]) == 0
        info = capsys.readouterr().out
        assert "lossless-binary-deep" in info and f"order" in info and order in info and "layers" in info
        assert codec.main(["decompress", str(out), "-o", str(tmp_path / order), "--checkpoint", str(path)]) == 0
        capsys.readouterr()
        assert np.array_equal(read_pngs(tmp_path / order) > 0, binary_images[:3] > 0)
    assert codec.main(["compress", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.vae"), "--checkpoint",
                       str(checkpoints[1]["binarized"]), "--order", "bbans"]) == 2  # fmt: skip
    assert "--order applies to lossless coding with a model that has a learned prior" in capsys.readouterr().err
