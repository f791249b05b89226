"""A dataset in, a ``.vae`` file out, and back: :func:`compress`, :func:`decompress`, and the lossy codec's
:func:`rate_distortion` measured from real bytes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from vae_utils.codec import hierarchy, portable
from vae_utils.codec.bitsback import _compress_lossless, _decode_lossless
from vae_utils.codec.format import (
    DEFAULT_LATENT_BITS,
    DEFAULT_STEP,
    LATENT_BITS_RANGE,
    MAX_LANES,
    CodecError,
    Compressed,
    _check_images,
    _check_int,
    _check_model,
    _check_step,
    model_id,
    read_header,
)
from vae_utils.codec.lossy import _compress_lossy, _decode_lossy
from vae_utils.evaluate import psnr


def compress(
    model,
    images: np.ndarray,
    mode: str = "lossless",
    *,
    latent_bits: int = DEFAULT_LATENT_BITS,
    step: float = DEFAULT_STEP,
    progress: bool = False,
    lanes: int | str = "auto",
    order: str | None = None,
) -> Compressed:
    """Compress ``images: (N, 28, 28) uint8`` (0/1 for a Bernoulli model, 0..255 for the logistic mixture).

    ``mode="lossless"``: bits-back coding with ``2**latent_bits`` buckets per latent dimension;
    :func:`decompress` returns the images exactly. ``mode="lossy"``: the encoder means quantized with ``step``;
    :func:`decompress` returns the decoder's mean images. The result's ``.data`` is the file's bytes.

    The model's arithmetic goes into the file: a float VAE writes a version 1 file that decodes on the same kind
    of machine; an integer model (:func:`vae_utils.shrink.integer_model`) writes a version 2 file that decodes
    bit-exactly on any machine, its lossless images spread over ``lanes`` ANS stacks (``"auto"``: one per
    500 images, at most 16) so that its networks run on many images per call.

    A model with a learned prior or several latent layers (Chapter 8) is coded losslessly in a ``-deep`` mode
    (version 2), its layers in ``order``: ``"bitswap"`` (the default) or ``"bbans"``.
    """
    integer = _is_integer(model)
    model = _check_integer_model(model) if integer else _check_model(model)
    if mode not in ("lossless", "lossy"):
        raise ValueError(f"mode must be 'lossless' or 'lossy', got {mode!r}")
    images = _check_images(model, images)
    if not integer and lanes not in ("auto", 1):
        raise ValueError(f"lanes apply to integer models only (a float model codes one image at a time), got {lanes!r}")
    deep = not integer and hierarchy.is_deep(model)
    if order is not None and not (deep and mode == "lossless"):
        raise ValueError(
            f"order applies to lossless coding of a model with a learned prior or several latent layers; this is "
            f"{mode} coding with a {type(model).__name__} with an N(0, I) prior and one layer, got order={order!r}"
            if not deep else f"order applies to lossless coding, not {mode}, got order={order!r}"
        )
    if mode == "lossy":
        step = _check_step(step)
        if integer:
            return portable.compress_lossy(model, images, step, model_id(model, decoder_only=True)[:16], progress)
        return _compress_lossy(model, images, step, model_id(model)[:16], progress)
    latent_bits = _check_int("latent_bits", latent_bits, *LATENT_BITS_RANGE)
    if integer:
        lanes = portable.auto_lanes(len(images)) if lanes == "auto" else _check_int("lanes", lanes, 1, MAX_LANES)
        return portable.compress_lossless(model, images, latent_bits, lanes, model_id(model)[:16], progress)
    if deep:
        order = "bitswap" if order is None else order
        return hierarchy.compress_deep(model, images, latent_bits, order, model_id(model)[:16], progress)
    return _compress_lossless(model, images, latent_bits, model_id(model)[:16], progress)


def _is_integer(model) -> bool:
    return getattr(model, "arithmetic", "float") == "integer"


def _check_integer_model(model):
    needed = ("posterior", "posterior_mean", "likelihood_probs", "mean_images", "latent_grid_int",
              "posterior_windows", "normal_cdf", "latent_dim", "likelihood", "decoder", "state_dict")  # fmt: skip
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise TypeError(f"an integer model must be a vae_utils.shrink.IntegerVAE; {type(model).__name__} lacks {missing}")
    return model


def decompress(model, blob: bytes, *, progress: bool = False) -> np.ndarray:
    """The images of a ``.vae`` file: ``(N, 28, 28) uint8``, 0/1 (lossless-binary), 0..255 (lossless-8bit) or
    the decoder's mean as grey levels (lossy). ``model`` must be the one that compressed them.

    Raises :class:`CodecError` for a file that is not intact or was written with another model.
    """
    header = read_header(blob)
    integer = _is_integer(model)
    model = _check_integer_model(model) if integer else _check_model(model)
    if header.arithmetic != ("integer" if integer else "float"):
        raise CodecError(
            f"the file was written with {header.arithmetic} arithmetic, but the given model computes in "
            f"{'integers' if integer else 'float'}; decompress it with "
            + ("the integer model that wrote it (vae_utils.shrink.load_weights)" if header.arithmetic == "integer"
               else "the float checkpoint that wrote it")
        )  # fmt: skip
    if not integer and header.version != 1 and not header.deep:
        raise CodecError(f"a float {header.mode} file is written in format version 1; this one says version "
                         f"{header.version}: it is corrupted, or was written by a later vae_utils")  # fmt: skip
    mid = model_id(model, decoder_only=integer and header.mode == "lossy")[:16]
    if mid != header.model_id:
        raise CodecError(
            f"the file was compressed with model {header.model_id.hex()}, but the given model is {mid.hex()}; "
            "decompress with the checkpoint that compressed it"
        )
    needed = {"lossless-binary": "bernoulli", "lossless-8bit": "logistic_mixture", "lossless-binary-deep": "bernoulli",
              "lossless-8bit-deep": "logistic_mixture"}.get(header.mode, model.likelihood)  # fmt: skip
    if model.likelihood != needed:
        raise CodecError(f"a {header.mode} file needs a {needed} model, got {model.likelihood}")
    payload = np.frombuffer(blob, dtype="<u4", offset=header.header_bytes, count=header.payload_bytes // 4)
    payload = payload.astype(np.uint32)
    try:
        if integer:
            decode = portable.decode_lossy if header.mode == "lossy" else portable.decode_lossless
        elif header.deep:
            decode = hierarchy.decode_deep
        else:
            decode = _decode_lossy if header.mode == "lossy" else _decode_lossless
        return decode(model, header, payload, progress)
    except CodecError:
        raise
    except Exception as error:  # noqa: BLE001 - constriction rejects the stream, or garbage reached numpy/torch
        raise CodecError(
            f"the payload cannot be decoded ({type(error).__name__}: {error}): the file is corrupted"
        ) from None


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
