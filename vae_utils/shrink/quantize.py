"""Smaller weights for the float codec: float16/bfloat16, int8 per output channel (int4 for the dense layers),
magnitude pruning with ``torch.nn.utils.prune`` and a short fine-tune through :class:`vae_utils.train.Trainer`.

Each function returns a float32 model (a copy) whose weights are exactly what a receiver rebuilds from the
compact weight file (:func:`vae_utils.shrink.save_weights`): the codec then runs on it as on any model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from vae_utils.shrink.integer import quantize_per_channel
from vae_utils.train import Trainer

WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and (transposed) convolution layers, by qualified name, in the model's order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHTED)]


def _check_vae(model) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "decoder") or not weighted_layers(model):
        raise TypeError(f"expected a vae_utils VAE (ConvVAE or FCVAE), got {type(model).__name__}")


def cast_weights(model, dtype: str = "float16"):
    """A copy whose parameters are rounded to ``dtype`` (float16 or bfloat16) and held as float32 again."""
    _check_vae(model)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
    out = copy.deepcopy(model).float().cpu()
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(p.to(FLOAT_DTYPES[dtype]).float())
    return out.eval()


def dequantize(codes: torch.Tensor, scale: torch.Tensor, transposed: bool) -> torch.Tensor:
    """``codes * scale`` per output channel, in float64 then rounded once to float32: the receiver's rule."""
    view = (1, -1) + (1,) * (codes.ndim - 2) if transposed else (-1,) + (1,) * (codes.ndim - 1)
    return (codes.double() * scale.double().view(view)).float()


def quantize_weights(model, bits: int = 8, dense_bits: int | None = None):
    """A copy with every weight matrix quantized symmetrically per output channel (``bits``: 8 or 4) and
    dequantized again; ``dense_bits`` (e.g. 4) for the Linear layers only. Biases stay float32.

    Returns ``(model, codes)``: ``codes[name] = (int8 codes, float64 scales, bits)`` for each weighted layer,
    what the compact weight file stores.
    """
    _check_vae(model)
    out = copy.deepcopy(model).float().cpu()
    codes = {}
    with torch.no_grad():
        for name, m in weighted_layers(out):
            b = dense_bits if dense_bits is not None and isinstance(m, nn.Linear) else bits
            transposed = isinstance(m, nn.ConvTranspose2d)
            q, scale = quantize_per_channel(m.weight, b, transposed)
            m.weight.copy_(dequantize(q, scale, transposed))
            codes[name] = (q, scale, b)
    return out.eval(), codes


def prune_weights(model, amount: float, scope: str = "global"):
    """A copy with the smallest-magnitude fraction ``amount`` of the weights set to zero, by
    ``torch.nn.utils.prune`` (L1, unstructured): ``scope="global"`` ranks all weight matrices together,
    ``"layer"`` prunes each by the same fraction. The masks stay attached (``weight_orig``, ``weight_mask``)
    so that fine-tuning keeps the zeros; :func:`finish_pruning` makes them permanent.
    """
    _check_vae(model)
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    out = copy.deepcopy(model).float().cpu()
    targets = [(m, "weight") for _, m in weighted_layers(out)]
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for m, name in targets:
            prune.l1_unstructured(m, name, amount=amount)
    return out


def finish_pruning(model):
    """Make the pruning masks permanent (``prune.remove``): plain weights with zeros, a normal state_dict."""
    for _, m in weighted_layers(model):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return model.eval()


def sparsity(model) -> float:
    """The fraction of weight-matrix entries that are exactly zero."""
    total = zeros = 0
    for _, m in weighted_layers(model):
        total += m.weight.numel()
        zeros += int((m.weight == 0).sum())
    return zeros / total


def fine_tune(model, config, log_folder: str | None = None):
    """Train a (pruned) model further with :class:`vae_utils.train.Trainer`, keeping its pruning masks.

    ``config``: a :class:`vae_utils.train.TrainConfig` describing the short run (epochs, learning rate, data);
    its ``out`` folder receives the usual log and checkpoints. Returns the trained model, masks made permanent.
    """
    trainer = Trainer(config, model=model)
    trainer.fit()
    return finish_pruning(trainer.model.cpu())
