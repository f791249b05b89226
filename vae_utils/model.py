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
import os
import platform
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vae_utils import __version__
from vae_utils.elbo import LIKELIHOODS, _check_positive_int, likelihood_mean, likelihood_sample, reparameterize
from vae_utils.elbo import checking_values

IMAGE_SHAPE = (1, 28, 28)
CHECKPOINT_FORMAT = "vae_utils.checkpoint"
CHECKPOINT_VERSION = 1
DENSE_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU}  # ConvVAE's choices after its hidden dense layers


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

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, mean: bool = False) -> torch.Tensor:
        """``n`` new images ``(n, 1, 28, 28)`` in [0, 1]: z ~ N(0, I), then x ~ p(x | z) (or its mean)."""
        p = next(self.parameters())
        shape = (_check_positive_int("n", n), self.latent_dim)
        params = self.decode(torch.randn(shape, generator=generator, dtype=p.dtype, device=p.device))
        if mean:
            return likelihood_mean(self.likelihood, params)
        return likelihood_sample(self.likelihood, params, generator)

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

    @property
    def config(self) -> dict:
        return {
            "latent_dim": self.latent_dim,
            "channels": self.channels,
            "hidden_dim": self.hidden_dim,
            "likelihood": self.likelihood,
            "n_components": self.n_components,
            "dense_activation": self.dense_activation,
            "encoder_dense_layers": self.encoder_dense_layers,
        }


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
    classes = {cls.__name__: cls for cls in (ConvVAE, FCVAE)}
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
