"""The VAEs of the book: a convolutional VAE and the classic fully connected one (Chapter 2), and their
checkpoints on disk (weights + config, written atomically, read safely with ``weights_only=True``).

Both map ``x: (B, 1, 28, 28) float in [0, 1]`` to a diagonal Gaussian posterior ``(mu, logvar): (B, D)`` and a
latent ``z: (B, D)`` to the parameters of p(x | z), whose likelihoods live in :mod:`vae_utils.elbo`:

- ``likelihood="bernoulli"``: logits ``(B, 1, 28, 28)`` for binarized images;
- ``likelihood="logistic_mixture"``: ``(B, 3 * n_components, 28, 28)`` for 8-bit images.

There is no BatchNorm anywhere: it couples the examples of a batch, and evaluation and coding must see one
image at a time, with the same result as in any batch.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vae_utils import __version__
from vae_utils.elbo import (
    LIKELIHOODS,
    _check_positive_int,
    checking_values,
    likelihood_mean,
    likelihood_sample,
    reparameterize,
)

IMAGE_SHAPE = (1, 28, 28)
CHECKPOINT_FORMAT = "vae_utils.checkpoint"
CHECKPOINT_VERSION = 1
DENSE_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU}  # ConvVAE's choices after its hidden dense layers
PRIORS = ("standard", "vamp", "mog")
"""p(z): N(0, I); the VampPrior (a mixture of the posteriors of learned pseudo-inputs, Tomczak & Welling 2018);
a mixture of Gaussians with learned weights, means and variances (Chapter 8)."""


class CheckpointError(ValueError):
    """A file that is not a vae_utils checkpoint, or whose weights do not fit the model it describes."""


class VAE(nn.Module):
    """What both VAEs share: input checks, ``forward``, ``sample``, ``reconstruct``, ``config``.

    A subclass builds ``self.encoder`` (x -> ``(B, 2D)``, mu then logvar) and ``self.decoder`` (z -> params).
    """

    def __init__(self, latent_dim: int, likelihood: str, n_components: int) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        self.latent_dim = _check_positive_int("latent_dim", latent_dim)
        self.likelihood = likelihood
        self.n_components = _check_positive_int("n_components", n_components)
        self.out_channels = 1 if likelihood == "bernoulli" else 3 * n_components

    @property
    def config(self) -> dict:
        """The constructor's arguments: ``type(model)(**model.config)`` rebuilds the same architecture."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        """How many numbers the weights hold (all parameters are trained)."""
        return sum(p.numel() for p in self.parameters())

    def _check_x(self, x: object) -> torch.Tensor:
        dtype = next(self.parameters()).dtype
        expected = f"expected a {dtype} tensor of shape (B, 1, 28, 28) in [0, 1]"
        hint = "make x from uint8 images with vae_utils.data.to_tensor"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{expected}; got {type(x).__name__} - {hint}")
        if x.dtype != dtype or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            error = TypeError if x.dtype != dtype else ValueError
            raise error(f"{expected}; got {x.dtype} of shape {tuple(x.shape)} - {hint}")
        if checking_values() and not ((x >= 0) & (x <= 1)).all():
            raise ValueError(f"{expected}; got values from {x.min().item():.4g} to {x.max().item():.4g} - {hint}")
        return x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: (B, 1, 28, 28)`` in [0, 1] -> ``(mu, logvar)``, each ``(B, latent_dim)``."""
        mu, logvar = self.encoder(self._check_x(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z: (B, latent_dim)`` -> the parameters of p(x | z), ``(B, 1 or 3K, 28, 28)``."""
        dtype = next(self.parameters()).dtype
        expected = f"z must be a {dtype} tensor of shape (B, {self.latent_dim})"
        if not isinstance(z, torch.Tensor) or z.dtype != dtype:
            raise TypeError(f"{expected}, got {z.dtype if isinstance(z, torch.Tensor) else type(z).__name__}")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{expected}, got shape {tuple(z.shape)}")
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"mu", "logvar", "z", "params"}`` with one ``z ~ q(z | x)`` per image."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return {"mu": mu, "logvar": logvar, "z": z, "params": self.decode(z)}

    prior = "standard"  # a ConvVAE may learn its prior (Chapter 8)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``(n, latent_dim)`` of z ~ p(z), the prior."""
        p = next(self.parameters())
        shape = (_check_positive_int("n", n), self.latent_dim)
        eps = torch.randn(shape, generator=generator, dtype=p.dtype, device=p.device)
        if self.prior == "standard":
            return eps
        log_weights, mu, logvar = self.prior_components()
        k = torch.multinomial(log_weights.exp(), n, replacement=True, generator=generator)
        return mu[k] + torch.exp(0.5 * logvar[k]) * eps

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, mean: bool = False) -> torch.Tensor:
        """``n`` new images ``(n, 1, 28, 28)`` in [0, 1]: z ~ p(z), then x ~ p(x | z) (or its mean)."""
        params = self.decode(self.sample_latent(n, generator))
        if mean:
            return likelihood_mean(self.likelihood, params)
        return likelihood_sample(self.likelihood, params, generator)

    def _init_prior(self, prior: str, components: int) -> None:
        """Parameters of a learned prior (none for N(0, I)); :meth:`prior_components` reads them."""
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        self.prior = prior
        self.prior_size = _check_positive_int("prior_components", components)
        if prior == "vamp":  # K pseudo-inputs, stored as logits of images in [0, 1]
            self.pseudo_inputs = nn.Parameter(0.1 * torch.randn(components, *IMAGE_SHAPE))
        elif prior == "mog":
            self.prior_logits = nn.Parameter(torch.zeros(components))
            self.prior_means = nn.Parameter(torch.randn(components, self.latent_dim))
            self.prior_logvars = nn.Parameter(torch.zeros(components, self.latent_dim))

    @torch.no_grad()
    def init_pseudo_inputs(self, images: torch.Tensor) -> None:
        """Start the VampPrior's K pseudo-inputs at K images ``(K, 1, 28, 28)`` in [0, 1], e.g. training
        images (Tomczak & Welling's initialisation from data); the prior then starts near the aggregate
        posterior instead of at K copies of one grey image."""
        if self.prior != "vamp":
            raise ValueError(f"only a VampPrior has pseudo-inputs; this model's prior is {self.prior!r}")
        images = self._check_x(images)
        if len(images) != len(self.pseudo_inputs):
            raise ValueError(f"expected {len(self.pseudo_inputs)} images, one per pseudo-input, got {len(images)}")
        self.pseudo_inputs.copy_(torch.logit(0.01 + 0.98 * images))

    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The learned prior as a mixture of K diagonal Gaussians: log weights ``(K,)``,
        means and log-variances ``(K, latent_dim)``. A VampPrior's components are the
        encoder's posteriors of its K pseudo-inputs, with equal weights: a learned
        stand-in for the aggregate posterior (Tomczak & Welling 2018)."""
        if self.prior == "vamp":
            pseudo_images = torch.sigmoid(self.pseudo_inputs)  # (K, 1, 28, 28)
            mu, logvar = self.encoder(pseudo_images).chunk(2, dim=1)
            k = len(mu)
            log_weights = torch.full((k,), -math.log(k), dtype=mu.dtype, device=mu.device)
            return log_weights, mu, logvar
        if self.prior == "mog":
            log_weights = torch.log_softmax(self.prior_logits, dim=0)
            return log_weights, self.prior_means, self.prior_logvars
        raise ValueError("this model's prior is N(0, I), which has no mixture components")

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z = mu(x)), ``(B, 1, 28, 28)`` in [0, 1]: a deterministic reconstruction."""
        return likelihood_mean(self.likelihood, self.decode(self.encode(x)[0]))


class ConvVAE(VAE):
    """Two stride-2 4x4 convolutions (28 -> 14 -> 7), one hidden dense layer, and the mirror image to decode.

    ReLU after the convolutions; after the hidden dense layers ``dense_activation``, ELU by default: a ReLU that
    is off for every input passes no gradient and never recovers, while an ELU always passes some. Chapter 4
    shows the all-ReLU model (``dense_activation="relu"``) collapse where this one does not. For
    ``"logistic_mixture"`` the decoder ends at full resolution with a 3x3 convolution and a 1x1 output head:
    3K numbers per pixel need more than a linear read-out.

    ``encoder_dense_layers > 1`` adds hidden dense layers to the encoder only: a deeper encoder gets closer to
    each image's best Gaussian posterior (a smaller amortization gap, Cremer et al. 2018, which Chapter 5
    measures). ``benchmarks/architecture.py`` measures what the ELUs and a second encoder layer are worth.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        likelihood: str = "bernoulli",
        n_components: int = 5,
        dense_activation: str = "elu",
        encoder_dense_layers: int = 1,
        prior: str = "standard",
        prior_components: int = 500,
    ) -> None:
        super().__init__(latent_dim, likelihood, n_components)
        if dense_activation not in DENSE_ACTIVATIONS:
            raise ValueError(
                f"dense_activation must be one of {', '.join(DENSE_ACTIVATIONS)}, "
                f"got {dense_activation!r}"
            )
        self.dense_activation = dense_activation
        act = DENSE_ACTIVATIONS[dense_activation]
        if (
            isinstance(channels, (str, bytes))
            or not isinstance(channels, Sequence)
            or len(channels) != 2
        ):
            raise ValueError(
                "channels must be two ints (after the 1st and 2nd convolution), "
                f"got {channels!r}"
            )
        c1, c2 = (_check_positive_int(f"channels[{i}]", c) for i, c in enumerate(channels))
        self.channels = (c1, c2)
        self.hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        self.encoder_dense_layers = _check_positive_int(
            "encoder_dense_layers", encoder_dense_layers
        )
        flat = c2 * 7 * 7
        more_dense = []  # the encoder's hidden dense layers after the first
        for _ in range(encoder_dense_layers - 1):
            more_dense += [nn.Linear(hidden_dim, hidden_dim), act()]
        conv = functools.partial(nn.Conv2d, kernel_size=4, stride=2, padding=1)
        deconv = functools.partial(nn.ConvTranspose2d, kernel_size=4, stride=2, padding=1)
        self.encoder = nn.Sequential(
            conv(1, c1), nn.ReLU(),  # 28 -> 14
            conv(c1, c2), nn.ReLU(),  # 14 -> 7
            nn.Flatten(),
            nn.Linear(flat, hidden_dim), act(),
            *more_dense,
            nn.Linear(hidden_dim, 2 * latent_dim),
        )
        if likelihood == "bernoulli":
            head = [deconv(c1, 1)]  # 14 -> 28
        else:
            head = [
                deconv(c1, c1), nn.ReLU(),  # 14 -> 28
                nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(),
                nn.Conv2d(c1, self.out_channels, 1),
            ]
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), act(),
            nn.Linear(hidden_dim, flat), act(),
            nn.Unflatten(1, (c2, 7, 7)),
            deconv(c2, c1), nn.ReLU(),  # 7 -> 14
            *head,
        )
        self._init_prior(prior, prior_components)

    @property
    def config(self) -> dict:
        config = {
            "latent_dim": self.latent_dim,
            "channels": self.channels,
            "hidden_dim": self.hidden_dim,
            "likelihood": self.likelihood,
            "n_components": self.n_components,
            "dense_activation": self.dense_activation,
            "encoder_dense_layers": self.encoder_dense_layers,
        }
        if self.prior != "standard":  # N(0, I) models keep the config (and codec model id) they always had
            config |= {"prior": self.prior, "prior_components": self.prior_size}
        return config


class HierarchicalVAE(ConvVAE):
    """Latent layers z_1 (bottom) ... z_L (top) in Bit-Swap's two Markov chains (Kingma et al. 2019).

    Generative, top down: z_L ~ N(0, I), z_l ~ p(z_l | z_{l+1}) (a Gaussian whose mean and log-variance an MLP
    computes from z_{l+1}), x ~ p(x | z_1) with the ConvVAE's decoder. Inference, bottom up: q(z_1 | x) with the
    ConvVAE's encoder, then q(z_{l+1} | z_l) by MLPs. So z_1 gets a learned prior p(z_1) = E_{p(z_2)}[p(z_1 |
    z_2)] instead of N(0, I). Each step sees only the layer next to it: that is what lets bits-back code the
    layers in Bit-Swap's interleaved order (Chapter 8). Skip connections (p(x | z_1, z_2), or q(z_2 | x)) would
    fit the data more easily but break that order, so there are none. Each p(z_l | z_{l+1}) starts as N(0, I),
    so a HierarchicalVAE warm-started from a ConvVAE (``--init-from``) starts at that ConvVAE's ELBO.
    """

    def __init__(
        self,
        latent_dims: Sequence[int] = (32, 16),
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        likelihood: str = "bernoulli",
        n_components: int = 5,
        dense_activation: str = "elu",
        encoder_dense_layers: int = 1,
    ) -> None:
        if (
            isinstance(latent_dims, (str, bytes))
            or not isinstance(latent_dims, Sequence)
            or len(latent_dims) < 2
        ):
            raise ValueError(
                "latent_dims must be two or more ints (the sizes of z_1, z_2, ..., bottom "
                f"first), got {latent_dims!r}"
            )
        dims = tuple(
            _check_positive_int(f"latent_dims[{i}]", d) for i, d in enumerate(latent_dims)
        )
        super().__init__(
            dims[0], channels, hidden_dim, likelihood, n_components,
            dense_activation, encoder_dense_layers,
        )
        self.latent_dims = dims
        act = DENSE_ACTIVATIONS[dense_activation]

        def mlp(d_in: int, d_out: int) -> nn.Sequential:  # -> mean and log-variance
            return nn.Sequential(
                nn.Linear(d_in, hidden_dim), act(),
                nn.Linear(hidden_dim, hidden_dim), act(),
                nn.Linear(hidden_dim, 2 * d_out),
            )

        pairs = list(zip(dims, dims[1:]))  # (z_l, z_{l+1}) for l = 1 .. L-1
        self.up = nn.ModuleList(mlp(a, b) for a, b in pairs)  # q(z_{l+1} | z_l)
        self.down = nn.ModuleList(mlp(b, a) for a, b in pairs)  # p(z_l | z_{l+1})
        for net in self.down:  # p(z_l | z_{l+1}) starts as N(0, I): the ConvVAE's prior
            nn.init.zeros_(net[-1].weight), nn.init.zeros_(net[-1].bias)

    @property
    def config(self) -> dict:
        config = super().config
        del config["latent_dim"]
        return {"latent_dims": self.latent_dims, **config}

    def _check_level(self, level: object, top_allowed: bool) -> int:
        top = len(self.latent_dims) - (0 if top_allowed else 1)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < top:
            raise ValueError(f"level must be an int in 0..{top - 1}, got {level!r}")
        return level

    def _check_latent(self, level: int, z: object) -> torch.Tensor:
        dtype, d = next(self.parameters()).dtype, self.latent_dims[level]
        if not isinstance(z, torch.Tensor) or z.dtype != dtype or z.ndim != 2 or z.shape[1] != d:
            seen = f"{z.dtype} {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z_{level + 1} must be a {dtype} tensor of shape (B, {d}), got {seen}")
        return z

    def posterior(self, level: int, given: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_{level+1} | given) as ``(mu, logvar)``: given = x for level 0 (:meth:`encode`), else z_level."""
        if self._check_level(level, top_allowed=True) == 0:
            return self.encode(given)
        return self.up[level - 1](self._check_latent(level - 1, given)).chunk(2, dim=1)

    def conditional_prior(self, level: int, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z_{level+1} | z_{level+2}) as ``(mu, logvar)``; level 0 is the bottom layer's prior."""
        level = self._check_level(level, top_allowed=False)
        return self.down[level](self._check_latent(level + 1, z_above)).chunk(2, dim=1)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``(n, latent_dims[0])`` of z_1 from the generative chain, top down."""
        p = next(self.parameters())
        n = _check_positive_int("n", n)
        z = torch.randn((n, self.latent_dims[-1]), generator=generator, dtype=p.dtype, device=p.device)
        for level in reversed(range(len(self.latent_dims) - 1)):
            mu, logvar = self.conditional_prior(level, z)
            eps = torch.randn(mu.shape, generator=generator, dtype=p.dtype, device=p.device)
            z = mu + torch.exp(0.5 * logvar) * eps
        return z


class FCVAE(VAE):
    """The fully connected 784-400-20 VAE of pytorch/examples ``vae/main.py``, after Kingma & Welling (2014)."""

    def __init__(
        self,
        latent_dim: int = 20,
        hidden_dim: int = 400,
        likelihood: str = "bernoulli",
        n_components: int = 5,
    ) -> None:
        super().__init__(latent_dim, likelihood, n_components)
        self.hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, self.out_channels * 28 * 28),
            nn.Unflatten(1, (self.out_channels, 28, 28)),
        )

    @property
    def config(self) -> dict:
        return {
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "likelihood": self.likelihood,
            "n_components": self.n_components,
        }


# ------------------------------------------------------------------------------------------ checkpoints on disk


def library_versions() -> dict[str, str]:
    return {"vae_utils": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def save_atomic(obj: dict, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_checkpoint(model: VAE, train_config: dict | None = None, **extra) -> dict:
    """A checkpoint dict: weights, the model's class and config, the training config and library versions."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": type(model).__name__,
        "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": train_config,
        "versions": library_versions(),
        **extra,
    }


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (``weights_only=True``) and check that it is one; no model is built."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - not a zip, truncated, or holds objects that are unsafe to unpickle
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:  # torch's message goes on to explain how to allow the object: not advice to pass on
            raise CheckpointError(
                f"{path} is not a vae_utils checkpoint: it holds a pickled Python object ({unsafe.group(1)}), which "
                "a checkpoint never does, and unpickling it could run code, so it was not loaded. Use a best.pt or "
                "last.pt written by python -m vae_utils.train, or a shipped one from checkpoints/"
            ) from None
        detail = (str(error).splitlines() or [""])[0]
        raise CheckpointError(
            f"{path} is not a readable vae_utils checkpoint ({type(error).__name__}: {detail}); it is truncated, "
            "damaged or not a torch file"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a vae_utils checkpoint (no format {CHECKPOINT_FORMAT!r})")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {checkpoint.get('version')!r}; this vae_utils reads version "
            f"{CHECKPOINT_VERSION}. Use the vae_utils version that wrote it: {checkpoint.get('versions')}"
        )
    return checkpoint


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """The model stored in a checkpoint (in eval mode, on ``device``) and the checkpoint dict itself."""
    checkpoint = read_checkpoint(path)
    classes = {cls.__name__: cls for cls in (ConvVAE, FCVAE, HierarchicalVAE)}
    if checkpoint.get("model_class") not in classes:
        raise CheckpointError(f"{path}: unknown model class {checkpoint.get('model_class')!r}; expected {list(classes)}")
    try:
        model = classes[checkpoint["model_class"]](**checkpoint["model_config"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise CheckpointError(
            f"{path}: the stored weights do not match the stored model config {checkpoint.get('model_config')} "
            f"({str(error).splitlines()[0]})"
        ) from None
    return model.to(device).eval(), checkpoint
