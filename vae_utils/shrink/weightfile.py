"""The compact weight file (``.vaew``): a model's quantized weights as the bytes a receiver must hold.

===========  =====  =========================================================================================
offset       bytes  field
===========  =====  =========================================================================================
0            4      magic ``b"VAEW"``
4            1      version (1)
5            1      kind: 0 a float VAE (ConvVAE / FCVAE), 1 an integer model (:class:`IntegerVAE`)
6            2      zero
8            4      metadata length J (u32, at most :data:`MAX_METADATA_BYTES`)
12           J      metadata, UTF-8 JSON: model class and config, and per tensor ``[name, storage, shape,
                    coding, bytes]``
12+J         4      payload length P (u32)
16+J         P      the tensors' bytes, in the metadata's order
16+J+P       4      CRC-32 (zlib) of everything before
===========  =====  =========================================================================================

Storage: ``f32``, ``f16``, ``bf16``, ``f64`` (raw, little-endian), ``i32``, ``i16``, ``i8`` (integers), and
``q8`` / ``q4`` (int8 codes of a per-channel quantized weight, whose scales follow as ``<name>.scale`` in
``f64``). Coding: ``raw``, or ``ans`` for integer codes of 4,096 or more entries: a 16-bit frequency per code
value, then the codes entropy-coded with constriction's ANS under those frequencies. A pruned weight's zeros
are frequent codes, so they cost a fraction of a bit each without a separate mask.

:func:`load_weights` checks magic, version, lengths and CRC before anything else, caps the metadata, the tensor
count and every tensor's size (so a hostile file cannot make it allocate much), checks every shape against the
model the config describes (built on torch's ``meta`` device first: no memory), and raises
:class:`WeightFileError` (a ``ValueError``) for every failure.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import constriction
import numpy as np
import torch

from vae_utils.model import FCVAE, ConvVAE
from vae_utils.shrink.integer import IntegerActivation, IntegerLayer, IntegerNet, IntegerVAE
from vae_utils.shrink.quantize import dequantize, weighted_layers

MAGIC = b"VAEW"
VERSION = 1
KINDS = ("float", "integer")
MAX_METADATA_BYTES = 1 << 16
MAX_TENSORS = 512
MAX_TENSOR_ELEMENTS = 1 << 24
MAX_TOTAL_ELEMENTS = 1 << 26
ANS_MIN_ELEMENTS = 4096
_FIXED = struct.Struct("<4sBBxxI")
_U32 = struct.Struct("<I")
_NUMPY = {"f32": "<f4", "f16": "<f2", "f64": "<f8", "i32": "<i4", "i16": "<i2", "i8": "i1", "q8": "i1", "q4": "i1"}
_CLASSES = {"ConvVAE": ConvVAE, "FCVAE": FCVAE}


class WeightFileError(ValueError):
    """Bytes that are not an intact compact weight file, or whose tensors do not fit the model they describe."""


# ------------------------------------------------------------------------------------------------- tensors


def _ans_encode(codes: np.ndarray) -> bytes:
    values = codes.astype(np.int64).ravel()
    low = int(values.min())
    counts = np.bincount(values - low)
    freqs = np.where(counts > 0, np.maximum(1, np.round(counts * 65535 / counts.max())), 0).astype("<u2")
    coder = constriction.stream.stack.AnsCoder()
    model = constriction.stream.model.Categorical(freqs / freqs.sum(), perfect=False)
    coder.encode_reverse((values - low).astype(np.int32), model)
    return struct.pack("<bH", low, len(freqs)) + freqs.tobytes() + coder.get_compressed().astype("<u4").tobytes()


def _ans_decode(blob: bytes, n: int) -> np.ndarray:
    low, k = struct.unpack_from("<bH", blob)
    if not 1 <= k <= 256 or len(blob) < 3 + 2 * k + 4 or (len(blob) - 3 - 2 * k) % 4:
        raise WeightFileError("an entropy-coded tensor has a damaged frequency table")
    freqs = np.frombuffer(blob, "<u2", k, 3).astype(np.float64)
    if freqs.sum() == 0:
        raise WeightFileError("an entropy-coded tensor has no symbol with a nonzero frequency")
    words = np.frombuffer(blob, "<u4", offset=3 + 2 * k).astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    values = coder.decode(constriction.stream.model.Categorical(freqs / freqs.sum(), perfect=False), n)
    if not coder.is_empty():
        raise WeightFileError("an entropy-coded tensor has bits left over: the file is corrupted")
    return (values.astype(np.int64) + low).astype(np.int8)


def _pack(name: str, tensor: torch.Tensor, storage: str) -> tuple[list, bytes]:
    t = tensor.detach().cpu()
    if storage == "bf16":
        raw = t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
        return [name, storage, list(t.shape), "raw", len(raw)], raw
    array = t.numpy().astype(_NUMPY[storage])
    if storage in ("i8", "q8", "q4") and array.size >= ANS_MIN_ELEMENTS:
        coded = _ans_encode(array)
        if len(coded) < array.size:
            return [name, storage, list(t.shape), "ans", len(coded)], coded
    raw = array.tobytes()
    return [name, storage, list(t.shape), "raw", len(raw)], raw


def _unpack(entry: list, blob: bytes) -> torch.Tensor:
    name, storage, shape, coding, _ = entry
    n = math.prod(shape)
    if coding == "ans":
        return torch.from_numpy(_ans_decode(blob, n).reshape(shape))
    if storage == "bf16":
        if len(blob) != 2 * n:
            raise WeightFileError(f"tensor {name}: {len(blob)} bytes for {n} bfloat16 values")
        return torch.from_numpy(np.frombuffer(blob, "<i2").astype(np.int16)).view(torch.bfloat16).reshape(shape)
    dtype = np.dtype(_NUMPY[storage])
    if len(blob) != n * dtype.itemsize:
        raise WeightFileError(f"tensor {name}: {len(blob)} bytes for {n} values of {storage}")
    return torch.from_numpy(np.frombuffer(blob, dtype).astype(dtype.newbyteorder("="))).reshape(shape)


# ------------------------------------------------------------------------------------------------- writing


def _float_entries(model, storage: str, codes: dict | None) -> list[tuple[str, torch.Tensor, str]]:
    out = []
    layers = dict(weighted_layers(model))
    for name, tensor in model.state_dict().items():
        layer = name.rsplit(".", 1)[0]
        if codes is not None and name.endswith(".weight") and layer in codes:
            q, scale, bits = codes[layer]
            if not torch.equal(dequantize(q, scale, isinstance(layers[layer], torch.nn.ConvTranspose2d)), tensor):
                raise ValueError(f"{name} is not the dequantized codes: pass the model quantize_weights returned")
            out += [(name, q, f"q{bits}"), (name + ".scale", scale, "f64")]
        else:
            out.append((name, tensor, storage))
    return out


def weight_file_bytes(model, storage: str = "f32", codes: dict | None = None) -> bytes:
    """The compact weight file of ``model``.

    A float VAE: ``storage`` ``"f32"``, ``"f16"`` or ``"bf16"`` for its tensors, and ``codes`` (from
    :func:`vae_utils.shrink.quantize_weights`) to store its quantized weight matrices as int8/int4 codes plus
    scales. An :class:`IntegerVAE`: its integer tensors (int8 weights entropy-coded, the rest as 32-bit).
    """
    if isinstance(model, IntegerVAE):
        kind, meta = 1, {"config": model.config}
        entries = [(n, t, "i8" if t.dtype == torch.int8 else "i32") for n, t in model.state_dict().items()]
        for name, tensor, _ in entries:
            if tensor.dtype != torch.int8 and tensor.abs().max() >= 2**31:
                raise ValueError(f"{name} does not fit 32 bits")
    else:
        if type(model).__name__ not in _CLASSES:
            raise TypeError(f"expected a ConvVAE, FCVAE or IntegerVAE, got {type(model).__name__}")
        if storage not in ("f32", "f16", "bf16"):
            raise ValueError(f"storage must be f32, f16 or bf16, got {storage!r}")
        kind = 0
        meta = {"class": type(model).__name__,
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}}  # fmt: skip
        entries = _float_entries(model, storage, codes)
    packed = [_pack(name, tensor, storage) for name, tensor, storage in entries]
    meta["tensors"] = [entry for entry, _ in packed]
    metadata = json.dumps(meta, separators=(",", ":")).encode()
    payload = b"".join(raw for _, raw in packed)
    body = _FIXED.pack(MAGIC, VERSION, kind, len(metadata)) + metadata + _U32.pack(len(payload)) + payload
    return body + _U32.pack(zlib.crc32(body))


def bytes_by_part(blob: bytes) -> dict[str, int]:
    """A weight file's bytes split into ``encoder``, ``decoder`` (their tensors) and ``overhead`` (header,
    metadata, checksum): a lossy receiver needs the decoder and the overhead only."""
    _, meta, _ = _read(blob)
    parts = {"encoder": 0, "decoder": 0}
    for name, _, _, _, size in meta["tensors"]:
        part = name.split(".")[0]
        parts[part if part in parts else "decoder"] += size
    return {**parts, "overhead": len(blob) - parts["encoder"] - parts["decoder"]}


def save_weights(model, path: str | Path, storage: str = "f32", codes: dict | None = None) -> int:
    """Write :func:`weight_file_bytes` to ``path``; returns the number of bytes."""
    blob = weight_file_bytes(model, storage, codes)
    Path(path).write_bytes(blob)
    return len(blob)


# ------------------------------------------------------------------------------------------------- reading


def _read(blob: bytes) -> tuple[int, dict, bytes]:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the file's bytes, got {type(blob).__name__}")
    blob, n = bytes(blob), len(blob)
    if n == 0:
        raise WeightFileError("the weight file is empty")
    if blob[:4] != MAGIC[: min(n, 4)]:
        raise WeightFileError(f"not a vae_utils weight file: it starts with {blob[:4]!r}, expected {MAGIC!r}")
    if n >= 5 and blob[4] != VERSION:
        raise WeightFileError(f"weight file version {blob[4]}, but this vae_utils reads version {VERSION}")
    if n < _FIXED.size + 2 * _U32.size:
        raise WeightFileError(f"the weight file is truncated: {n} bytes")
    _, _, kind, length = _FIXED.unpack_from(blob)
    if length > MAX_METADATA_BYTES:
        raise WeightFileError(f"the metadata is said to be {length} bytes; at most {MAX_METADATA_BYTES}")
    if n < _FIXED.size + length + 2 * _U32.size:
        raise WeightFileError(f"the weight file is truncated: {n} bytes, its metadata alone needs {length}")
    payload_length = _U32.unpack_from(blob, _FIXED.size + length)[0]
    expected = _FIXED.size + length + 2 * _U32.size + payload_length
    if n != expected:
        raise WeightFileError(f"the weight file has {n} bytes, its header says {expected}: truncated or extended")
    if _U32.unpack_from(blob, n - 4)[0] != zlib.crc32(blob[: n - 4]):
        raise WeightFileError("checksum mismatch: the weight file is corrupted")
    if kind >= len(KINDS) or blob[6:8] != b"\0\0":
        raise WeightFileError(f"unknown kind {kind} (or nonzero reserved bytes)")
    try:
        meta = json.loads(blob[_FIXED.size : _FIXED.size + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightFileError(f"the metadata is not JSON ({error})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), list) or not isinstance(meta.get("config"), dict):
        raise WeightFileError("the metadata has no tensor list or config")
    return kind, meta, blob[_FIXED.size + length + _U32.size : n - 4]


def _tensors(meta: dict, payload: bytes) -> dict[str, torch.Tensor]:
    entries = meta["tensors"]
    if len(entries) > MAX_TENSORS:
        raise WeightFileError(f"{len(entries)} tensors; at most {MAX_TENSORS}")
    total, offset, out = 0, 0, {}
    for entry in entries:
        ok = (isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], str)
              and entry[1] in (*_NUMPY, "bf16") and entry[3] in ("raw", "ans") and isinstance(entry[2], list)
              and all(isinstance(d, int) and 0 <= d <= MAX_TENSOR_ELEMENTS for d in entry[2])
              and isinstance(entry[4], int) and entry[4] >= 0)  # fmt: skip
        if not ok or (entry[3] == "ans" and entry[1] not in ("i8", "q8", "q4")):
            raise WeightFileError(f"a malformed tensor entry: {str(entry)[:80]}")
        n = math.prod(entry[2])
        total += n
        if n > MAX_TENSOR_ELEMENTS or total > MAX_TOTAL_ELEMENTS:
            raise WeightFileError(f"tensor {entry[0]} makes {total} values; at most {MAX_TOTAL_ELEMENTS}")
        if offset + entry[4] > len(payload):
            raise WeightFileError(f"tensor {entry[0]} runs past the end of the payload")
        out[entry[0]] = _unpack(entry, payload[offset : offset + entry[4]])
        offset += entry[4]
    if offset != len(payload):
        raise WeightFileError(f"{len(payload) - offset} payload bytes belong to no tensor")
    return out


def _float_model(meta: dict, tensors: dict[str, torch.Tensor]):
    cls = _CLASSES.get(meta.get("class"))
    if cls is None:
        raise WeightFileError(f"unknown model class {meta.get('class')!r}; expected {list(_CLASSES)}")
    with torch.device("meta"):
        skeleton = cls(**meta["config"])  # checks the config and the shapes without allocating
    state = {}
    layers = dict(weighted_layers(skeleton))
    for name, shape in ((n, tuple(t.shape)) for n, t in skeleton.state_dict().items()):
        if name not in tensors:
            raise WeightFileError(f"the file lacks tensor {name}")
        t = tensors[name]
        if name + ".scale" in tensors:
            layer = layers.get(name.rsplit(".", 1)[0])
            transposed = isinstance(layer, torch.nn.ConvTranspose2d)
            if t.dtype != torch.int8 or tensors[name + ".scale"].shape != (shape[1] if transposed else shape[0],):
                raise WeightFileError(f"{name}: codes or scales of the wrong shape")
            t = dequantize(t, tensors[name + ".scale"], transposed)
        if tuple(t.shape) != shape:
            raise WeightFileError(f"{name} has shape {tuple(t.shape)}, the config needs {shape}")
        state[name] = t.float()
    model = cls(**meta["config"])
    model.load_state_dict(state)
    return model.eval()


def _integer_net(spec: list, tensors: dict[str, torch.Tensor], prefix: str) -> IntegerNet:
    layers = []
    for i, op in enumerate(spec):
        if not isinstance(op, dict) or "op" not in op:
            raise WeightFileError(f"{prefix} layer {i} is malformed")
        if op["op"] in ("linear", "conv", "deconv"):
            names = [f"{prefix}.{i}.{k}" for k in ("weight", "bias", "mult", "shift", "low", "high")]
            if any(n not in tensors for n in names):
                raise WeightFileError(f"{prefix} layer {i} lacks some of its tensors")
            w, *rest = (tensors[n] for n in names)
            if w.dtype != torch.int8 or w.ndim != (2 if op["op"] == "linear" else 4):
                raise WeightFileError(f"{prefix} layer {i}: int8 weights of the wrong rank")
            if any(len(t) != w.shape[1 if op["op"] == "deconv" else 0] or t.ndim != 1 for t in rest):
                raise WeightFileError(f"{prefix} layer {i}: per-channel tensors of the wrong length")
            if not all(1 <= s <= 62 for s in rest[2].tolist()):
                raise WeightFileError(f"{prefix} layer {i}: shifts outside 1..62")
            layers.append(IntegerLayer(op["op"], w, *rest, stride=int(op.get("stride", 1)),
                                       padding=int(op.get("padding", 0))))  # fmt: skip
        else:
            layers.append(IntegerActivation(op["op"], int(op.get("frac_bits", 0)), tuple(op.get("shape", ()))))
    return IntegerNet(*layers)


def _integer(meta: dict, tensors: dict[str, torch.Tensor]) -> IntegerVAE:
    c = meta["config"]
    try:
        decoder = _integer_net(c["decoder"], tensors, "decoder")
        encoder = _integer_net(c["encoder"], tensors, "encoder") if c.get("encoder") is not None else None
        model = IntegerVAE(int(c["latent_dim"]), c["likelihood"], int(c["n_components"]), decoder, encoder).eval()
        with torch.no_grad():  # the layers must fit together: one forward pass each
            model.decoder_output(torch.zeros(1, model.latent_dim, dtype=torch.int64))
            if encoder is not None:
                model.posterior(np.zeros((1, 784), np.uint8))
    except WeightFileError:
        raise
    except Exception as error:  # noqa: BLE001 - a crafted spec or tensors that do not fit together
        raise WeightFileError(f"the integer model's layers do not fit together ({type(error).__name__}: "
                              f"{str(error)[:120]})") from None  # fmt: skip
    return model


def load_weights(source: str | Path | bytes):
    """The model in a compact weight file (a path or the bytes): a float32 ConvVAE/FCVAE or an IntegerVAE."""
    blob = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    kind, meta, payload = _read(blob)
    try:
        tensors = _tensors(meta, payload)
        return _integer(meta, tensors) if KINDS[kind] == "integer" else _float_model(meta, tensors)
    except WeightFileError:
        raise
    except Exception as error:  # noqa: BLE001 - constriction or torch rejected crafted contents
        raise WeightFileError(f"the weight file's contents are damaged ({type(error).__name__}: "
                              f"{str(error)[:120]})") from None  # fmt: skip
