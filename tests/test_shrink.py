"""Tests of vae_utils.shrink and the codec's integer path: the integer tables and layers are exact, integer files
decode bit-exactly with 1 and 2 threads, in batches of 1 and 64 and in a second process; quantization, pruning
and fine-tuning; the compact weight file under truncation, bit flips, crafted metadata and fuzzing; format
version 2 headers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_codec import binary_model, mixture_model, train_tiny  # noqa: F401 - the codec tests' fixtures

from vae_utils import codec, data, shrink
from vae_utils.elbo import likelihood_mean
from vae_utils.model import ConvVAE
from vae_utils.shrink import integer, tables
from vae_utils.train import TrainConfig

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
TABLES_SHA256 = "ad18ed701eb0f952cfe04a06fa79bc44a7b6017317160285e008f094b74d3aad"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def binary_images():
    return data.binarize_stochastic(data.load_mnist().x_test[:200], data.STATIC_BINARIZATION_SEED)


@pytest.fixture(scope="module")
def int_binary(binary_model):
    calibration = data.binarize_stochastic(data.load_mnist().x_train[:300], 1)
    return shrink.integer_model(binary_model, calibration)


@pytest.fixture(scope="module")
def int_mixture(mixture_model):
    return shrink.integer_model(mixture_model, data.load_mnist().x_train[:300])


@pytest.fixture(scope="module")
def integer_file(int_binary, binary_images):
    return codec.compress(int_binary, binary_images[:64], lanes=8).data


# ------------------------------------------------------------------------------------------------- tables


def test_tables_are_the_same_on_every_machine_and_accurate():
    digest = hashlib.sha256()
    for name, t in sorted(tables.all_tables().items()):
        digest.update(name.encode())
        digest.update(t.numpy().astype("<i8").tobytes())
    assert digest.hexdigest() == TABLES_SHA256  # built from Python integers: any machine gets these bytes
    x = torch.arange(-30 * 65536, 30 * 65536, 977, dtype=torch.int64)
    real = x.double() / 65536
    sig = tables.lookup(tables.sigmoid_table(), x).double() / 2**24
    phi = tables.lookup(tables.phi_table(), x).double() / 2**40
    assert (sig - torch.sigmoid(real)).abs().max() < 1e-6 and (phi - torch.special.ndtr(real)).abs().max() < 1e-6
    assert (sig.diff() >= 0).all() and (phi.diff() >= 0).all()  # interpolation keeps them monotone
    e = tables.lookup(tables.exp_table(), torch.tensor([-3 * 65536, 0, 5 * 65536])).double() / 65536
    torch.testing.assert_close(e, torch.exp(torch.tensor([-3.0, 0.0, 5.0], dtype=torch.float64)), rtol=1e-3, atol=0)


def test_integer_layers_equal_int64_arithmetic(int_binary, binary_images):
    """The float64 products are exact: every layer's output equals the same computation in int64."""
    x = torch.from_numpy(binary_images[:8].astype(np.int64)).unsqueeze(1)
    for layer in int_binary.encoder:
        if isinstance(layer, integer.IntegerLayer) and layer.kind == "conv":
            w = layer.weight.to(torch.int64)
            k = w.shape[-1]
            cols = F.unfold(x.double(), k, padding=layer.padding, stride=layer.stride).to(torch.int64)
            acc = torch.einsum("ok,bkl->bol", w.reshape(len(w), -1), cols).reshape(len(x), len(w), *layer(x).shape[2:])
        elif isinstance(layer, integer.IntegerLayer):
            acc = x @ layer.weight.to(torch.int64).T
        else:
            x = layer(x)
            continue
        view = (1, -1) + (1,) * (acc.ndim - 2)
        expected = integer._requantize(acc + layer.bias.view(view), layer.mult, layer.shift, layer.low, layer.high)
        assert torch.equal(layer(x), expected)
        x = expected


def test_integer_model_refuses_what_it_cannot_prove(binary_model):
    with pytest.raises(TypeError, match="uint8"):
        shrink.integer_model(binary_model, np.zeros((4, 28, 28), np.float32))
    huge = train_tiny("bernoulli", steps=1)
    with torch.no_grad():
        huge.decoder[2].weight.mul_(1e-9)  # tiny weight steps: the bias, in steps, overflows float64's integers
    with pytest.raises(ValueError, match="2\\*\\*53"):
        shrink.integer_model(huge, np.zeros((4, 28, 28), np.uint8))


# ------------------------------------------------------------------------------------------- portability


def test_integer_probabilities_do_not_depend_on_batch_or_threads(int_binary, int_mixture, binary_images):
    centres = shrink.latent_grid_int(12)[1]
    z = centres[torch.randint(4096, (64, int_binary.latent_dim), generator=torch.Generator().manual_seed(0))]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            batch = int_binary.likelihood_probs(z)
            single = np.concatenate([int_binary.likelihood_probs(z[i : i + 1]) for i in range(64)])
            mu = int_binary.posterior(binary_images[:64].reshape(64, -1))[0]
            mu_single = torch.cat([int_binary.posterior(binary_images[i : i + 1].reshape(1, -1))[0] for i in range(64)])
            assert np.array_equal(batch, single) and torch.equal(mu, mu_single)
            results.append((batch, mu, int_mixture.likelihood_probs(z[:4, : int_mixture.latent_dim])))
        assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else torch.equal(a, b)
                   for a, b in zip(*results))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    p = results[0][0]
    assert np.array_equal(p * 2**24, np.round(p * 2**24))  # integers over 2**24: exact in float64


@pytest.mark.parametrize("lanes", [1, 64])
def test_integer_file_decodes_bit_exactly_with_1_and_2_threads(lanes, int_binary, binary_images):
    """lanes=1 runs the networks on one image per call, lanes=64 on 64: the same file either way."""
    x = binary_images[:64]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        blob = codec.compress(int_binary, x, lanes=lanes).data
        torch.set_num_threads(1)
        assert codec.compress(int_binary, x, lanes=lanes).data == blob
        assert np.array_equal(codec.decompress(int_binary, blob), x)
        torch.set_num_threads(2)
        assert np.array_equal(codec.decompress(int_binary, blob), x)
    finally:
        torch.set_num_threads(threads)
    assert codec.read_header(blob).lanes == lanes


def test_integer_file_decodes_in_a_second_process(int_binary, integer_file, binary_images, tmp_path):
    (tmp_path / "model.vaew").write_bytes(shrink.weight_file_bytes(int_binary))
    (tmp_path / "images.vae").write_bytes(integer_file)
    script = ("import sys, numpy as np, torch; torch.set_num_threads(2)\n"
              "from vae_utils import codec, shrink\n"
              "model = shrink.load_weights(sys.argv[1])\n"
              "images = codec.decompress(model, open(sys.argv[2], 'rb').read())\n"
              "np.save(sys.argv[3], images)\n")  # fmt: skip
    out = tmp_path / "decoded.npy"
    run = subprocess.run([sys.executable, "-c", script, tmp_path / "model.vaew", tmp_path / "images.vae", out],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.load(out), binary_images[:64])


def test_integer_rate_stays_at_the_float_rate(binary_model, int_binary, binary_images):
    floating = codec.compress(binary_model, binary_images)
    integer_ = codec.compress(int_binary, binary_images, lanes=1)
    assert integer_.net_bits_per_dim == pytest.approx(floating.net_bits_per_dim, rel=0.03)


def test_integer_8bit_lossless_and_lossy(int_mixture, mixture_model):
    grey = data.load_mnist().x_test[:6]
    result = codec.compress(int_mixture, grey, lanes=2)
    assert result.header.mode == "lossless-8bit" and result.header.arithmetic == "integer"
    assert np.array_equal(codec.decompress(int_mixture, result.data), grey)
    lossy = codec.compress(int_mixture, grey, "lossy", step=0.25)
    decoded = codec.decompress(int_mixture, lossy.data)
    # the integer mixture mean is the float decoder's mean at the same latents, within rounding
    symbols = np.clip(np.rint(int_mixture.posterior_mean(grey.reshape(6, -1)) / 0.25), -32, 32)
    with torch.no_grad():
        mean = likelihood_mean("logistic_mixture", mixture_model.decode(torch.from_numpy(symbols * 0.25).float()))
    reference = (255 * mean.double()).round().numpy()[:, 0]
    assert decoded.shape == (6, 28, 28) and np.abs(decoded - reference).mean() < 1.5


def test_lossy_integer_file_needs_only_the_decoder(binary_model, int_binary, binary_images):
    calibration = data.binarize_stochastic(data.load_mnist().x_train[:300], 1)
    decoder_only = shrink.integer_model(binary_model, calibration, decoder_only=True)
    result = codec.compress(int_binary, binary_images[:20], "lossy", step=0.5)
    decoded = codec.decompress(decoder_only, result.data)
    symbols = np.clip(np.rint(int_binary.posterior_mean(binary_images[:20].reshape(20, -1)) / 0.5), -16, 16)
    z = torch.from_numpy(np.rint(symbols * 0.5 * 2**16).astype(np.int64))
    assert np.array_equal(decoded, int_binary.mean_images(z))
    with pytest.raises(ValueError, match="no encoder"):
        codec.compress(decoder_only, binary_images[:2])


def test_arithmetic_mismatch_is_a_clear_error(binary_model, int_binary, integer_file, binary_images):
    with pytest.raises(codec.CodecError, match="integer arithmetic.*integer model"):
        codec.decompress(binary_model, integer_file)
    float_file = codec.compress(binary_model, binary_images[:3]).data
    assert codec.read_header(float_file).version == 1  # float files are still version 1, byte for byte
    with pytest.raises(codec.CodecError, match="float arithmetic"):
        codec.decompress(int_binary, float_file)
    with pytest.raises(ValueError, match="lanes apply to integer models"):
        codec.compress(binary_model, binary_images[:3], lanes=4)


def test_cli_explains_integer_files(integer_file, tmp_path, capsys):
    (tmp_path / "int.vae").write_bytes(integer_file)
    assert codec.main(["decompress", str(tmp_path / "int.vae"), "-o", str(tmp_path / "out")]) == 2
    assert "integer model" in capsys.readouterr().err
    assert codec.main(["info", str(tmp_path / "int.vae")]) == 0
    info = capsys.readouterr().out
    assert "arithmetic" in info and "integer" in info and "lanes" in info


# ------------------------------------------------------------------------------------------ v2 headers


def recrc(blob: bytes) -> bytes:
    return blob[:-4] + struct.pack("<I", zlib.crc32(blob[:-4]))


def test_version_2_header_round_trip_and_hostile_fields(int_binary, integer_file):
    header = codec.read_header(integer_file)
    assert header.version == 2 and header.lanes == 8 and sum(header.lane_words) * 4 == header.payload_bytes
    assert len(integer_file) == header.file_bytes == header.header_bytes + header.payload_bytes + 4
    payload = integer_file[header.header_bytes : -4]

    def rebuilt(**fields):
        h = dataclasses.replace(header, **fields)
        return recrc(h.pack() + payload + b"\0\0\0\0")

    assert rebuilt() == integer_file
    checks = [({"lane_words": (*header.lane_words[:-1], header.lane_words[-1] + 1)}, "add up"),
              ({"lane_stripped": (header.seed_words + 1,) * 8}, "out of range"), ({"arithmetic": "float"}, "float")]
    for fields, match in checks:
        with pytest.raises(codec.CodecError, match=match):
            codec.decompress(int_binary, rebuilt(**fields))
    blob = bytearray(integer_file)
    blob[6] = 9  # arithmetic
    with pytest.raises(codec.CodecError, match="unknown arithmetic 9"):
        codec.read_header(recrc(bytes(blob)))
    blob = bytearray(integer_file)
    blob[32:34] = struct.pack("<H", 60000)  # a parameter block longer than allowed
    with pytest.raises(codec.CodecError, match="parameter block"):
        codec.read_header(recrc(bytes(blob)))
    for n in range(0, len(integer_file), 7):
        with pytest.raises(codec.CodecError):
            codec.read_header(integer_file[:n])


@FUZZ
@given(st.data())
def test_fuzz_mutations_of_an_integer_file(int_binary, binary_images, integer_file, draw):
    blob = bytearray(integer_file)
    for _ in range(draw.draw(st.integers(1, 3), label="edits")):
        blob[draw.draw(st.integers(0, len(blob) - 1), label="position")] = draw.draw(st.integers(0, 255))
    candidate = recrc(bytes(blob)) if draw.draw(st.booleans(), label="fix crc") else bytes(blob)
    try:
        decoded = codec.decompress(int_binary, candidate)
    except codec.CodecError:
        return
    assert candidate == integer_file and np.array_equal(decoded, binary_images[:64])


# ----------------------------------------------------------------------------------- quantize and prune


def test_quantization_variants(binary_model):
    half = shrink.cast_weights(binary_model, "float16")
    assert all(torch.equal(p, p.half().float()) for p in half.parameters())
    q8, codes = shrink.quantize_weights(binary_model)
    for name, layer in shrink.weighted_layers(q8):
        q, scale, bits = codes[name]
        assert bits == 8 and q.abs().max() <= 127 and q.dtype == torch.int8
        error = (layer.weight - dict(shrink.weighted_layers(binary_model))[name].weight).abs().max()
        assert error <= scale.max() / 2 + 1e-7  # at most half a step
    _, codes4 = shrink.quantize_weights(binary_model, dense_bits=4)
    assert {codes4[n][2] for n, m in shrink.weighted_layers(binary_model) if isinstance(m, torch.nn.Linear)} == {4}
    with pytest.raises(ValueError, match="dtype must be"):
        shrink.cast_weights(binary_model, "float8")
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        shrink.quantize_weights(binary_model, bits=3)


def test_pruning_and_fine_tuning_keep_the_zeros(binary_model, tmp_path):
    for scope in ("global", "layer"):
        pruned = shrink.prune_weights(binary_model, 0.6, scope)
        assert shrink.sparsity(shrink.finish_pruning(pruned)) == pytest.approx(0.6, abs=0.01)
    config = TrainConfig(data="binarized", latent_dim=8, channels=(8, 16), hidden_dim=32, n_components=2, epochs=1,
                         batch_size=64, train_subset=256, val_subset=64, kl_warmup_epochs=0, lr=1e-3,
                         device="cpu", progress=False, out=str(tmp_path / "ft"))  # fmt: skip
    pruned = shrink.prune_weights(binary_model, 0.6, "layer")
    tuned = shrink.fine_tune(pruned, config)
    assert shrink.sparsity(tuned) >= 0.6 - 0.01 and (tmp_path / "ft" / "log.csv").is_file()
    assert not any(torch.equal(a, b) for a, b in zip(tuned.parameters(), binary_model.parameters()))
    assert set(tuned.state_dict()) == set(binary_model.state_dict())  # masks made permanent
    with pytest.raises(ValueError, match="fraction"):
        shrink.prune_weights(binary_model, 1.5)


# --------------------------------------------------------------------------------------- the weight file


@pytest.fixture(scope="module")
def weight_files(binary_model, int_binary):
    q8, codes = shrink.quantize_weights(shrink.finish_pruning(shrink.prune_weights(binary_model, 0.5)))
    return {"f32": (binary_model, shrink.weight_file_bytes(binary_model)),
            "q8": (q8, shrink.weight_file_bytes(q8, codes=codes)),
            "integer": (int_binary, shrink.weight_file_bytes(int_binary))}  # fmt: skip


def test_weight_file_round_trips_to_the_same_model_id(weight_files, binary_model, tmp_path):
    for name, (model, blob) in weight_files.items():
        loaded = shrink.load_weights(blob)
        assert codec.model_id(loaded) == codec.model_id(model), name
    f32, q8 = len(weight_files["f32"][1]), len(weight_files["q8"][1])
    assert q8 < f32 / 4  # int8 codes, half of them zeros and entropy-coded
    for storage, dtype in (("f16", "float16"), ("bf16", "bfloat16")):
        cast = shrink.cast_weights(binary_model, dtype)
        size = shrink.save_weights(cast, tmp_path / f"{storage}.vaew", storage)
        assert codec.model_id(shrink.load_weights(tmp_path / f"{storage}.vaew")) == codec.model_id(cast)
        assert size < f32 / 2 + 4096
    parts = shrink.bytes_by_part(weight_files["integer"][1])
    assert parts["encoder"] > 0 and parts["decoder"] > 0 and sum(parts.values()) == len(weight_files["integer"][1])


def test_weight_file_bad_input(weight_files):
    blob = weight_files["q8"][1]
    for n in range(0, len(blob), max(1, len(blob) // 300)):
        with pytest.raises(shrink.WeightFileError):
            shrink.load_weights(blob[:n])
    with pytest.raises(shrink.WeightFileError, match="not a vae_utils weight file"):
        shrink.load_weights(b"PK\x03\x04" + blob[4:])
    with pytest.raises(shrink.WeightFileError, match="version 7"):
        shrink.load_weights(blob[:4] + b"\x07" + blob[5:])
    with pytest.raises(shrink.WeightFileError, match="checksum"):
        shrink.load_weights(blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:])
    with pytest.raises(TypeError, match="bytes"):
        shrink.load_weights(12)


def crafted(blob: bytes, edit) -> bytes:
    """The file with its metadata JSON changed by ``edit`` (a function), lengths and CRC made valid again."""
    length = struct.unpack_from("<I", blob, 8)[0]
    meta = json.loads(blob[12 : 12 + length])
    edit(meta)
    text = json.dumps(meta).encode()
    body = blob[:8] + struct.pack("<I", len(text)) + text + blob[12 + length : -4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_weight_file_crafted_metadata_with_a_valid_crc(weight_files):
    blob = weight_files["q8"][1]

    def set_config(**values):
        return lambda meta: meta["config"].update(values)

    def set_tensor(i, j, value):
        return lambda meta: meta["tensors"][i].__setitem__(j, value)

    edits = [set_config(latent_dim=10**9), set_config(hidden_dim=-3), set_tensor(0, 2, [2**30, 2**30]),
             set_tensor(0, 1, "f99"), set_tensor(0, 4, 10**9), set_tensor(1, 0, "other"),
             lambda meta: meta.update(tensors=meta["tensors"] * 100), lambda meta: meta.update(tensors=None),
             lambda meta: meta.update({"class": "os.system"})]  # fmt: skip
    for edit in edits:
        with pytest.raises(shrink.WeightFileError):
            shrink.load_weights(crafted(blob, edit))
    integer_blob = weight_files["integer"][1]
    for edit in (lambda m: m["config"]["decoder"].reverse(), lambda m: m["config"]["decoder"][0].update(op="conv")):
        with pytest.raises(shrink.WeightFileError):
            shrink.load_weights(crafted(integer_blob, edit))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_weight_file_arbitrary_bytes(blob):
    for candidate in (blob, b"VAEW\x01" + blob):
        with pytest.raises(shrink.WeightFileError):
            shrink.load_weights(candidate)


@FUZZ
@given(st.data())
def test_fuzz_weight_file_mutations(weight_files, draw):
    name = draw.draw(st.sampled_from(sorted(weight_files)), label="file")
    _, original = weight_files[name]
    blob = bytearray(original)
    for _ in range(draw.draw(st.integers(1, 3), label="edits")):
        blob[draw.draw(st.integers(0, len(blob) - 1), label="position")] = draw.draw(st.integers(0, 255))
    candidate = bytes(blob)
    if draw.draw(st.booleans(), label="fix crc"):
        candidate = candidate[:-4] + struct.pack("<I", zlib.crc32(candidate[:-4]))
    try:
        loaded = shrink.load_weights(candidate)
    except shrink.WeightFileError:
        return
    if candidate != original:  # a change the checks cannot see must be a change of weights, never a crash
        assert isinstance(loaded, (ConvVAE, shrink.IntegerVAE))
