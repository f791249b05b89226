"""Integer networks for a portable codec (Ballé et al. 2019): the same probabilities on every machine.

**What is integer.** Weights are int8 (symmetric, one scale per output channel); every activation is an integer
``|a| < 2**20`` with a power-of-two scale per tensor; biases are integers at the accumulator's scale. A layer
computes ``acc = W a + b`` exactly, then ``y = (acc * M_c + 2**(S_c - 1)) >> S_c``: one integer multiplier and
shift per output channel stand for ``scale_w[c] * scale_in / scale_out``. ReLU is ``max(y, 0)``; ELU's negative
side and the final sigmoid, logistic CDF, ``exp`` and normal CDF are read from the integer tables of
:mod:`vae_utils.shrink.tables` with integer interpolation. The latents enter the decoder as integers in units of
2**-16; the probabilities handed to the entropy coder are integers divided by a power of two, exact in float64.

**Why it is exact.** torch has no integer convolution, so ``W a`` runs as a float64 matrix product (convolutions
as ``unfold`` + product, transposed ones as product + ``fold``). Integers in float64 add exactly as long as
every partial sum stays below ``2**53``, whatever the order of the sum, the BLAS, the thread count or the device.
:func:`integer_model` proves that bound for every output channel, ``sum |W| * 2**20 + |b| < 2**53`` (and
``< 2**62`` after the multiplier, for the int64 product), and refuses a model that breaks it; activations are
clamped below ``2**20`` at run time, so the bound holds for any input. Everything after the product is int64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vae_utils.shrink import tables

ACT_LIMIT = 2**20 - 1
"""Hidden activations (and the latents, in units of 2**-16) are clamped to -ACT_LIMIT..ACT_LIMIT."""
EXACT_LIMIT = 2**53
"""Float64 holds every integer below this exactly: the bound every accumulator is proved to respect."""
PRODUCT_LIMIT = 2**62
MULT_BITS = 15
"""Per-channel multipliers M lie in 2**14 .. 2**15 - 1."""
Z_BITS = 16
"""Latents z and the encoder's mean in units of 2**-16."""
LOGVAR_RANGE = (-24.0, 12.0)
"""The encoder's log-variance (units of 2**-16) is clamped to this range: sigma from 6e-6 to 403."""
MEAN_UNIT = 255 * 256
"""Mixture means in units of 1 / (255 * 256) on the [-1, 1] scale: every bin edge (2j - 255) / 255 is an integer."""
MEAN_LIMIT = 32
"""Mixture means are clamped to -32..32 on the [-1, 1] pixel scale (an unused component may sit far outside)."""
LOG_SCALE_RANGE = (-7.0, 6.0)
MIX_WEIGHT_BITS = 16
"""Mixture weights are integers that sum to exactly 2**16."""
CDF_BITS = MIX_WEIGHT_BITS + tables.SIGMOID_BITS
"""A mixture's CDF in units of 2**-40."""
WINDOW_SIGMAS = 6
Z_LIMIT = 16 << Z_BITS


# ------------------------------------------------------------------------------------------ integer layers


def _requantize(acc, mult, shift, low, high) -> torch.Tensor:
    """``(acc * M + 2**(S-1)) >> S`` per channel (dim 1), clamped to the layer's
    output range ``low..high``; all int64."""
    view = (1, -1) + (1,) * (acc.ndim - 2)
    shift = shift.view(view)
    y = (acc * mult.view(view) + (1 << (shift - 1))) >> shift
    return torch.maximum(torch.minimum(y, high.view(view)), low.view(view))


def _batched_product(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w (M, K) @ x (B, K, L) -> (B, M, L)`` as one matrix product (B small products are several times slower)."""
    b, k, n = x.shape
    return (w @ x.transpose(0, 1).reshape(k, b * n)).reshape(len(w), b, n).transpose(0, 1)


class IntegerLayer(nn.Module):
    """A Linear, Conv2d or ConvTranspose2d layer in integers: int8 weights, integer bias, multiplier and shift."""

    def __init__(self, kind: str, weight: torch.Tensor, bias: torch.Tensor, mult: torch.Tensor,
                 shift: torch.Tensor, low: torch.Tensor, high: torch.Tensor, stride: int = 1,
                 padding: int = 0) -> None:  # fmt: skip
        super().__init__()
        if kind not in ("linear", "conv", "deconv"):
            raise ValueError(f"kind must be linear, conv or deconv, got {kind!r}")
        self.kind, self.stride, self.padding = kind, stride, padding
        self.register_buffer("weight", weight.to(torch.int8))
        for name, value in (("bias", bias), ("mult", mult), ("shift", shift), ("low", low), ("high", high)):
            self.register_buffer(name, value.to(torch.int64))

    def spec(self) -> dict:
        return {"op": self.kind, "stride": self.stride, "padding": self.padding}

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """int64 in, int64 out; the products in float64 hold integers < 2**53: exact."""
        w, x = self.weight.double(), a.double()
        s, p = self.stride, self.padding
        if self.kind == "linear":
            acc = x @ w.T
        elif self.kind == "conv":
            k = w.shape[-1]
            cols = F.unfold(x, k, padding=p, stride=s)  # a gather: exact
            size = (x.shape[2] + 2 * p - k) // s + 1
            acc = _batched_product(w.reshape(len(w), -1), cols)
            acc = acc.reshape(len(x), len(w), size, size)
        else:  # transposed convolution: the product, then fold adds the overlaps
            c_in, c_out, k = w.shape[0], w.shape[1], w.shape[-1]
            w_t = w.reshape(c_in, c_out * k * k).T
            cols = _batched_product(w_t, x.reshape(len(x), c_in, -1))
            size = (x.shape[2] - 1) * s - 2 * p + k
            acc = F.fold(cols, (size, size), k, padding=p, stride=s)
        view = (1, -1) + (1,) * (acc.ndim - 2)
        acc = acc.to(torch.int64) + self.bias.view(view)
        return _requantize(acc, self.mult, self.shift, self.low, self.high)


class IntegerActivation(nn.Module):
    """ReLU, ELU (its negative side from the exp table), or a reshape; ``frac_bits``: the input's scale 2**-f."""

    def __init__(self, kind: str, frac_bits: int = 0, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        if kind not in ("relu", "elu", "flatten", "unflatten"):
            raise ValueError(f"kind must be relu, elu, flatten or unflatten, got {kind!r}")
        self.kind, self.frac_bits, self.shape = kind, int(frac_bits), tuple(shape)

    def spec(self) -> dict:
        return {"op": self.kind, "frac_bits": self.frac_bits, "shape": list(self.shape)}

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return a.clamp(min=0)
        if self.kind == "flatten":
            return a.flatten(1)
        if self.kind == "unflatten":
            return a.reshape(len(a), *self.shape)
        f = self.frac_bits  # elu(x) = exp(x) - 1 for x < 0: x = a / 2**f, the table takes units of 2**-16
        x = (-a).clamp(min=0)
        x = x << (tables.ARG_BITS - f) if f <= tables.ARG_BITS else x >> (f - tables.ARG_BITS)
        e = tables.lookup(tables.exp_neg_table(), x)  # exp(-|x|) in units of 2**-30
        shift = tables.EXP_NEG_BITS - f
        negative = ((e - (1 << tables.EXP_NEG_BITS)) + (1 << (shift - 1))) >> shift
        return torch.where(a < 0, negative, a)


class IntegerNet(nn.Sequential):
    """A sequence of :class:`IntegerLayer` and :class:`IntegerActivation`: int64 in, int64 out."""

    def spec(self) -> list[dict]:
        return [m.spec() for m in self]


# ------------------------------------------------------------------------------------------ float -> integer


def _multiplier(ratio: float) -> tuple[int, int]:
    """``ratio ~ M * 2**-S`` with ``2**14 <= M < 2**15``."""
    if not (ratio > 0 and math.isfinite(ratio)):
        raise ValueError(f"a layer's scale ratio must be positive and finite, got {ratio}")
    shift = MULT_BITS - 1 - math.floor(math.log2(ratio))
    mult = round(ratio * 2.0**shift)
    if mult >= 2**MULT_BITS:
        mult, shift = mult // 2, shift - 1
    if not 1 <= shift <= 62:
        raise ValueError(f"a layer's scale ratio {ratio:g} needs a shift of {shift}; the integer network allows 1..62")
    return mult, shift


def quantize_per_channel(
    weight: torch.Tensor, bits: int = 8, transposed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization per output channel: ``(codes int8, scales float64)``
    with ``weight ~ codes * scale``; ``bits=8``: codes -127..127, ``bits=4``: -7..7.
    A ConvTranspose2d (``transposed``) has its output channels in dim 1."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    w = weight.detach().double()
    w = w.transpose(0, 1) if transposed else w
    top = 2 ** (bits - 1) - 1
    scale = w.abs().flatten(1).amax(dim=1) / top
    fallback = scale.max() if scale.max() > 0 else torch.tensor(1.0 / top).double()
    scale = torch.where(scale > 0, scale, fallback)  # an all-zero (pruned) channel
    shape = (-1,) + (1,) * (w.ndim - 1)
    codes = torch.round(w / scale.view(shape)).clamp(-top, top).to(torch.int8)
    return (codes.transpose(0, 1).contiguous() if transposed else codes), scale


def _frac_bits(max_abs: float) -> int:
    """The power-of-two scale 2**-f that puts twice the largest activation seen just under ACT_LIMIT."""
    return math.floor(math.log2(ACT_LIMIT / max(2 * max_abs, 1e-6)))


def _convert(seq: nn.Sequential, maxima: dict[int, float], in_scale: float, in_limit: int,
             out_formats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> IntegerNet:  # fmt: skip
    """One float Sequential -> IntegerNet. ``maxima[i]``: the largest |output| of weighted layer ``i`` on the
    calibration images; ``out_formats``: the last layer's per-channel output scale and clamp range."""
    modules = list(seq)
    weighted = [i for i, m in enumerate(modules) if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    layers: list[nn.Module] = []
    scale, limit, frac = in_scale, in_limit, None
    for i, m in enumerate(modules):
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            transposed = isinstance(m, nn.ConvTranspose2d)
            codes, w_scale = quantize_per_channel(m.weight, 8, transposed)
            n_out = len(w_scale)
            if i == weighted[-1]:
                out_scale, low, high = out_formats
            else:
                frac = _frac_bits(maxima[i])
                out_scale = torch.full((n_out,), 2.0**-frac, dtype=torch.float64)
                low, high = torch.full((n_out,), -ACT_LIMIT), torch.full((n_out,), ACT_LIMIT)
            acc_scale = w_scale * scale
            bias = torch.round(m.bias.detach().double() / acc_scale)
            per_out = codes.transpose(0, 1) if transposed else codes
            bound = per_out.abs().double().flatten(1).sum(1) * limit + bias.abs()  # the largest |acc| any input gives
            if bound.max() >= EXACT_LIMIT:
                raise ValueError(f"layer {i} ({type(m).__name__}) can reach {bound.max():.3g} in its accumulator; "
                                 "the integer network needs < 2**53 for exact float64 sums")  # fmt: skip
            bias = bias.to(torch.int64)
            mult, shift = zip(*(_multiplier(r) for r in (acc_scale / out_scale).tolist()))
            mult, shift = torch.tensor(mult), torch.tensor(shift)
            if (bound * mult).max() >= PRODUCT_LIMIT:
                raise ValueError(f"layer {i} ({type(m).__name__}): accumulator times multiplier can reach 2**62")
            kind = "linear" if isinstance(m, nn.Linear) else "deconv" if transposed else "conv"
            stride = 1 if kind == "linear" else m.stride[0]
            padding = 0 if kind == "linear" else m.padding[0]
            layers.append(IntegerLayer(kind, codes, bias, mult, shift, low, high, stride, padding))
            scale, limit = float(out_scale[0]), ACT_LIMIT
        elif isinstance(m, nn.ReLU):
            layers.append(IntegerActivation("relu"))
        elif isinstance(m, nn.ELU):
            if m.alpha != 1.0:
                raise ValueError(f"the integer network supports ELU with alpha 1, got {m.alpha}")
            layers.append(IntegerActivation("elu", frac_bits=frac))
        elif isinstance(m, nn.Flatten):
            layers.append(IntegerActivation("flatten"))
        elif isinstance(m, nn.Unflatten):
            layers.append(IntegerActivation("unflatten", shape=tuple(m.unflattened_size)))
        else:
            raise TypeError(f"the integer network cannot convert {type(m).__name__} (layer {i})")
    return IntegerNet(*layers)


@torch.no_grad()
def _layer_maxima(seq: nn.Sequential, x: torch.Tensor) -> dict[int, float]:
    """The largest |output| of each weighted layer of ``seq`` on input ``x``."""
    maxima = {}
    for i, m in enumerate(seq):
        x = m(x)
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            maxima[i] = float(x.abs().max())
    return maxima


def _output_formats(model, part: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel output scale and clamp range of the last layer of the encoder or decoder."""
    def block(n, scale, low, high):
        return (torch.full((n,), scale, dtype=torch.float64), torch.full((n,), int(low)), torch.full((n,), int(high)))

    d, q = model.latent_dim, 2.0**-tables.ARG_BITS
    if part == "encoder":  # mu, then logvar, both in units of 2**-16
        parts = [block(d, q, -Z_LIMIT, Z_LIMIT), block(d, q, LOGVAR_RANGE[0] / q, LOGVAR_RANGE[1] / q)]
    elif model.likelihood == "bernoulli":  # logits in units of 2**-16
        parts = [block(1, q, -tables.SIGMOID_MAX / q, tables.SIGMOID_MAX / q)]
    else:  # mixture logits, means (units of 1/(255*256)), log-scales
        k = model.n_components
        parts = [block(k, q, -(64 << tables.ARG_BITS), 64 << tables.ARG_BITS), block(k, 1 / MEAN_UNIT, -MEAN_LIMIT * MEAN_UNIT, MEAN_LIMIT * MEAN_UNIT),
                 block(k, q, LOG_SCALE_RANGE[0] / q, LOG_SCALE_RANGE[1] / q)]  # fmt: skip
    return tuple(torch.cat(column) for column in zip(*parts))


def _input_scale(model) -> float:
    return 1.0 if model.likelihood == "bernoulli" else 1 / 255


class IntegerVAE(nn.Module):
    """A VAE whose encoder and decoder compute in integers; the codec's ``arithmetic="integer"`` model.

    ``encoder`` may be ``None``: a decoder alone is what a receiver of lossy files needs. Build one with
    :func:`integer_model`; store it with :func:`vae_utils.shrink.save_weights`.
    """

    arithmetic = "integer"

    def __init__(self, latent_dim: int, likelihood: str, n_components: int, decoder: IntegerNet,
                 encoder: IntegerNet | None = None) -> None:  # fmt: skip
        super().__init__()
        self.latent_dim, self.likelihood, self.n_components = latent_dim, likelihood, n_components
        self.encoder, self.decoder = encoder, decoder

    @property
    def config(self) -> dict:
        return {"latent_dim": self.latent_dim, "likelihood": self.likelihood, "n_components": self.n_components,
                "encoder": self.encoder.spec() if self.encoder is not None else None,
                "decoder": self.decoder.spec()}  # fmt: skip

    def _device(self) -> torch.device:
        return self.decoder[0].weight.device

    # the codec's integer latents (see vae_utils.codec.portable)
    @staticmethod
    def latent_grid_int(latent_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        return latent_grid_int(latent_bits)

    @staticmethod
    def posterior_windows(mu: torch.Tensor, logvar: torch.Tensor, latent_bits: int):
        return posterior_windows(mu, logvar, latent_bits)

    @staticmethod
    def normal_cdf(x: torch.Tensor) -> torch.Tensor:
        """Phi(x) for x in units of 2**-16, in units of 2**-40."""
        return tables.lookup(tables.phi_table(), x)

    # ------------------------------------------------------------------ encoder side
    @torch.no_grad()
    def posterior(self, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixels: (B, 784)`` symbols -> ``(mu, logvar)``, int64 ``(B, D)`` in units of 2**-16."""
        if self.encoder is None:
            raise ValueError("this integer model has no encoder (a decoder-only model decodes lossy files only); "
                             "compressing needs the whole model")  # fmt: skip
        x = torch.from_numpy(np.asarray(pixels, dtype=np.int64).reshape(-1, 1, 28, 28)).to(self._device())
        out = self.encoder(x)
        return out[:, : self.latent_dim].cpu(), out[:, self.latent_dim :].cpu()

    def posterior_mean(self, pixels: np.ndarray) -> np.ndarray:
        """The encoder's mean as float64 ``(B, D)`` (exact: an integer over 2**16)."""
        return self.posterior(pixels)[0].double().numpy() / 2**Z_BITS

    # ------------------------------------------------------------------ decoder side
    @torch.no_grad()
    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """``z: (B, D)`` int64 in units of 2**-16 -> the decoder's integer outputs ``(B, C, 28, 28)``."""
        return self.decoder(z.to(self._device()).clamp(-Z_LIMIT, Z_LIMIT)).cpu()

    def bernoulli_probs(self, out: torch.Tensor) -> torch.Tensor:
        """P(x = 1) in units of 2**-24, int64, kept in 1 .. 2**24 - 1 so both symbols stay codable."""
        p = tables.lookup(tables.sigmoid_table(), out)
        return p.clamp(1, (1 << tables.SIGMOID_BITS) - 1)

    def mixture_cdf(self, out: torch.Tensor) -> torch.Tensor:
        """The mixture's CDF at the 255 inner bin edges, ``(B, H, W, 255)`` int64 in units of 2**-40."""
        k = self.n_components
        logits, means, log_scales = out[:, :k], out[:, k : 2 * k], out[:, 2 * k :]
        e = tables.lookup(tables.exp_neg_table(), logits.amax(dim=1, keepdim=True) - logits)  # exp(l - max)
        w = (e << MIX_WEIGHT_BITS) // e.sum(dim=1, keepdim=True)
        top = (logits == logits.amax(dim=1, keepdim=True)).to(torch.int64).argmax(dim=1, keepdim=True)
        w = w.scatter_add(1, top, (1 << MIX_WEIGHT_BITS) - w.sum(dim=1, keepdim=True))  # sum exactly 2**16
        inv_scale = tables.lookup(tables.exp_table(), -log_scales)  # exp(-log_scale) in units of 2**-16
        edges = (2 * torch.arange(1, 256, dtype=torch.int64) - 256) * 256  # (2j - 1)/255 - 1, j = 1..255
        d = edges - means.unsqueeze(-1)  # (B, K, H, W, 255)
        t = torch.div(d * inv_scale.unsqueeze(-1) + MEAN_UNIT // 2, MEAN_UNIT, rounding_mode="floor")
        cdf = tables.lookup(tables.sigmoid_table(), t)  # units of 2**-24
        return (w.unsqueeze(-1) * cdf).sum(dim=1)

    def likelihood_probs(self, z: torch.Tensor, chunk: int = 8) -> np.ndarray:
        """The entropy coder's tables for p(x | z): P(x = 1) ``(B, 784)``, or the 256-level pmf ``(B, 784, 256)``,
        float64 values that are integers over a power of two (exact, the same on every machine)."""
        if self.likelihood == "bernoulli":
            p = self.bernoulli_probs(self.decoder_output(z))
            return p.reshape(len(z), -1).double().numpy() / 2**tables.SIGMOID_BITS
        parts = []
        for start in range(0, len(z), chunk):
            cdf = self.mixture_cdf(self.decoder_output(z[start : start + chunk]))
            full = F.pad(cdf, (1, 0), value=0)
            full = F.pad(full, (0, 1), value=1 << CDF_BITS)
            parts.append((full[..., 1:] - full[..., :-1]).reshape(len(cdf), -1, 256))
        return torch.cat(parts).double().numpy() / 2**CDF_BITS

    def mean_images(self, z: torch.Tensor, chunk: int = 8) -> np.ndarray:
        """E[x | z] as ``uint8`` images ``(B, 28, 28)``, ``round(255 * mean)`` in integers."""
        out = []
        for start in range(0, len(z), chunk):
            params = self.decoder_output(z[start : start + chunk])
            if self.likelihood == "bernoulli":
                p = self.bernoulli_probs(params)[:, 0]
                out.append((p * 255 + (1 << (tables.SIGMOID_BITS - 1))) >> tables.SIGMOID_BITS)
            else:
                above = (255 << CDF_BITS) - self.mixture_cdf(params).sum(dim=-1)  # E[k] = sum_j P(k > j)
                out.append((above + (1 << (CDF_BITS - 1))) >> CDF_BITS)
        return torch.cat(out).clamp(0, 255).numpy().astype(np.uint8)


@torch.no_grad()
def integer_model(model, calibration: np.ndarray, decoder_only: bool = False, seed: int = 0) -> IntegerVAE:
    """The integer version of a float ConvVAE or FCVAE (weights as they are: quantize or prune them first if
    you like; int8 per channel happens here).

    ``calibration: (N, 28, 28) uint8`` images in the model's alphabet (a few hundred training images): the
    largest activation of each layer on them, and on z drawn from their posteriors, sets that layer's
    power-of-two scale with a factor 2 of headroom. ``decoder_only``: leave the encoder out.
    """
    if not isinstance(calibration, np.ndarray) or calibration.dtype != np.uint8 or calibration.ndim != 3:
        raise TypeError("calibration must be a uint8 array of images (N, 28, 28)")
    model = model.float().cpu().eval()
    x = torch.from_numpy(calibration.astype(np.float32) * _input_scale(model)).unsqueeze(1)
    mu, logvar = model.encode(x)
    noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))
    z = torch.cat([mu, mu + torch.exp(0.5 * logvar) * noise])
    decoder = _convert(model.decoder, _layer_maxima(model.decoder, z), 2.0**-Z_BITS, ACT_LIMIT,
                       _output_formats(model, "decoder"))  # fmt: skip
    encoder = None
    if not decoder_only:
        in_limit = 1 if model.likelihood == "bernoulli" else 255
        encoder = _convert(model.encoder, _layer_maxima(model.encoder, x), _input_scale(model), in_limit,
                           _output_formats(model, "encoder"))  # fmt: skip
    return IntegerVAE(model.latent_dim, model.likelihood, model.n_components, decoder, encoder).eval()


# ------------------------------------------------------------------------------------- latents in integers


def _invert_phi(targets: list[int]) -> torch.Tensor:
    """x (units of 2**-16) with Phi(x) = target (units of 2**-40), by the integer table and interpolation."""
    values, start = tables.phi_table()
    t = torch.tensor(targets, dtype=torch.int64)
    k = torch.searchsorted(values, t, right=True) - 1
    a, b = values[k], values[k + 1]
    return ((k + start) << tables.GRID_BITS) + torch.div((t - a) << tables.GRID_BITS, b - a, rounding_mode="floor")


_GRIDS: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def latent_grid_int(latent_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The codec's latent buckets in integers: ``edges (2**b + 1,)`` and ``centres (2**b,)``, int64 in units of
    2**-16, the prior quantiles of ``i / 2**b`` and ``(i + 1/2) / 2**b`` (the outer edges are +-2**40)."""
    if latent_bits not in _GRIDS:
        n, bits = 2**latent_bits, tables.PHI_BITS
        inner = _invert_phi([i << (bits - latent_bits) for i in range(1, n)])
        edges = torch.cat([torch.tensor([-(1 << 40)]), inner, torch.tensor([1 << 40])])
        centres = _invert_phi([(2 * i + 1) << (bits - latent_bits - 1) for i in range(n)])
        _GRIDS[latent_bits] = edges, centres
    return _GRIDS[latent_bits]


def posterior_windows(mu: torch.Tensor, logvar: torch.Tensor, latent_bits: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """q(z | x) over the buckets within 6 sigma of mu, in integers: ``starts (R,)`` and, per row, the masses of
    its window's buckets (int64, summing to exactly 2**40), for R = B * D rows (image-major)."""
    edges, _ = latent_grid_int(latent_bits)
    n = len(edges) - 1
    mu, logvar = mu.reshape(-1, 1), logvar.reshape(-1, 1)
    inv_sigma = tables.lookup(tables.exp_table(), -(logvar >> 1))  # exp(-logvar / 2), units of 2**-16
    sigma = torch.div((1 << 32) + inv_sigma // 2, inv_sigma, rounding_mode="floor")
    lo = torch.searchsorted(edges, mu - WINDOW_SIGMAS * sigma, right=True) - 1
    hi = torch.searchsorted(edges, mu + WINDOW_SIGMAS * sigma)
    lo, hi = lo.clamp(0, n - 2), hi.clamp(2, n)
    lo, hi = torch.minimum(lo, hi - 2), torch.maximum(hi, lo + 2)
    widths = (hi - lo)[:, 0]
    masses: list[np.ndarray] = [np.empty(0, np.int64)] * len(widths)
    group = torch.ceil(torch.log2(widths.double())).long()  # rows of similar width together: little padding
    for g in torch.unique(group).tolist():
        rows = torch.nonzero(group == g)[:, 0]
        steps = torch.arange(int(widths[rows].max()) + 1)
        index = torch.minimum(lo[rows] + steps, hi[rows])
        t = ((edges[index] - mu[rows]).clamp(-4 * Z_LIMIT, 4 * Z_LIMIT) * inv_sigma[rows]) >> tables.ARG_BITS
        cdf = tables.lookup(tables.phi_table(), t)
        cdf[:, 0] = 0
        cdf = torch.where(steps >= widths[rows, None], 1 << tables.PHI_BITS, cdf)  # the window holds all of q
        diff = (cdf[:, 1:] - cdf[:, :-1]).numpy()
        for r, row, w in zip(rows.tolist(), diff, widths[rows].tolist()):
            masses[r] = row[:w]
    return lo[:, 0].numpy(), masses
