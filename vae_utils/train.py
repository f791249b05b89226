"""Training: the loop, checkpoints, resume, devices, several processes; ``python -m vae_utils.train`` (Ch. 4).

One :class:`TrainConfig` describes a run completely. The run writes into its output folder:

- ``config.json``  the configuration (re-run it with ``--config config.json``);
- ``log.csv``      one row per epoch: train and validation -ELBO, rate, distortion, learning rate, beta, time;
- ``last.pt``      everything needed to resume exactly (weights, optimizer, scheduler, random states, history);
- ``best.pt``      the weights with the best validation -ELBO so far.

Checkpoints are written atomically (a temporary file, then a rename) and read with ``weights_only=True``.

No training step waits for the device: the epoch's sums stay on it, and so does a NaN/inf flag, which
:class:`DivergenceGuard` reads every ``nan_check_every`` steps. ``compile``, ``precision`` and
``channels_last`` make a GPU step faster (off by default; on the CPU they change the floats or gain
nothing). Under ``torchrun`` every process trains on its share of each batch with DistributedDataParallel:
see ``book/scaling.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import clip_grad_norm_
from tqdm.auto import tqdm

from vae_utils import data
from vae_utils.elbo import elbo, nats_to_bits_per_dim, value_checks
from vae_utils.evaluate import per_image_nelbo
from vae_utils.model import (
    DENSE_ACTIVATIONS,
    FCVAE,
    PRIORS,
    CheckpointError,
    ConvVAE,
    HierarchicalVAE,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_atomic,
)  # fmt: skip

MODELS = {"conv": ConvVAE, "fc": FCVAE, "hvae": HierarchicalVAE}
COMPILE_MODES = ("off", "on", "graphs")
PRECISIONS = ("fp32", "bf16")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: the book's conv VAE on binarized MNIST."""

    data: str = "binarized"  # "binarized" (dynamic binarization in training) or "8bit"
    model: str = "conv"  # "conv", "fc" or "hvae" (the hierarchical VAE of Chapter 8)
    latent_dim: int = 32
    channels: tuple[int, int] = (32, 64)  # conv only
    hidden_dim: int = 256
    dense_activation: str = "elu"  # conv only: "elu" or "relu" after the hidden dense layers
    encoder_dense_layers: int = 1  # conv only: hidden dense layers in the encoder (the decoder has one)
    n_components: int = 5  # 8-bit only: logistic mixture components
    prior: str = "standard"  # conv only: "standard" N(0, I), "vamp" (VampPrior) or "mog" (mixture of Gaussians)
    prior_components: int = 500  # vamp/mog only: pseudo-inputs or mixture components
    latent_dims: tuple[int, ...] = (32, 16)  # hvae only: sizes of z_1 ... z_L, bottom first (latent_dim unused)
    free_bits: float = 0.0  # nats per latent layer below which the KL is not pushed down (0: the plain ELBO)
    init_from: str = ""  # a checkpoint whose weights start this run where the models share them ("": random)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # "cosine" (to zero over all steps) or "constant"
    lr_warmup_epochs: float = 0.0  # the learning rate ramps linearly from 0 over this many epochs, then follows the schedule
    beta: float = 1.0
    kl_warmup_epochs: float = 5.0  # beta ramps linearly from 0 over this many epochs
    grad_clip: float = 100.0  # max gradient norm; 0 disables clipping
    seed: int = 0
    split_seed: int = 0
    train_subset: int = 0  # use only the first N training images (0: all); for quick runs and tests
    val_subset: int = 0  # validate on only the first N validation images (0: all)
    device: str = "auto"  # "auto" picks cuda, then mps, then cpu
    # how the steps run; the defaults are the plain eager loop in float32 (book/scaling.md)
    compile: str = "off"  # "on": torch.compile; "graphs": torch.compile with CUDA graphs (CUDA only)
    precision: str = "fp32"  # "bf16": the networks under autocast; likelihood, KL and sums in float32
    channels_last: bool = False  # convolutions in NHWC memory layout
    drop_last: bool = False  # skip each epoch's last, smaller batch: every step has one shape
    nan_check_every: int = 100  # read the device's NaN/inf flag every N steps and at each epoch's end
    out: str = "runs/conv_binarized"
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {"data": data.KINDS, "model": tuple(MODELS), "lr_schedule": ("cosine", "constant"),
                   "dense_activation": tuple(DENSE_ACTIVATIONS), "compile": COMPILE_MODES,
                   "precision": PRECISIONS, "prior": PRIORS}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("train_subset", "val_subset", "seed", "split_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        for name in ("channels_last", "drop_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "latent_dim", "hidden_dim", "n_components", "encoder_dense_layers",
                     "nan_check_every", "prior_components"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr", "beta", "kl_warmup_epochs", "grad_clip", "lr_warmup_epochs", "free_bits"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be positive")
        self.channels = tuple(self.channels)
        self.latent_dims = tuple(self.latent_dims)
        if len(self.latent_dims) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                            for d in self.latent_dims):  # fmt: skip
            raise ValueError(f"latent_dims must be two or more positive ints, bottom first, got {self.latent_dims!r}")
        if self.prior != "standard" and self.model != "conv":
            raise ValueError(f"prior {self.prior!r} is a ConvVAE option; use --model conv (got {self.model!r})")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; allowed: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**values)

    def model_kwargs(self) -> dict:
        likelihood = "bernoulli" if self.data == "binarized" else "logistic_mixture"
        kwargs = {"latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim, "likelihood": likelihood,
                  "n_components": self.n_components}  # fmt: skip
        if self.model in ("conv", "hvae"):
            kwargs |= {"channels": self.channels, "dense_activation": self.dense_activation,
                       "encoder_dense_layers": self.encoder_dense_layers}
        if self.model == "conv" and self.prior != "standard":
            kwargs |= {"prior": self.prior, "prior_components": self.prior_components}
        if self.model == "hvae":
            del kwargs["latent_dim"]
            kwargs["latent_dims"] = self.latent_dims
        return kwargs


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA if available, then Apple's MPS, else the CPU; any other name is used as given."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available here; use --device auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ------------------------------------------------------------------------------------ several processes (DDP)


def process_group() -> tuple[int, int]:
    """This process's rank and the number of processes: ``(0, 1)`` unless torch.distributed is set up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def process_device(name: str, world_size: int) -> torch.device:
    """:func:`pick_device`; with several processes on CUDA, each process's own GPU, ``cuda:LOCAL_RANK``."""
    device = pick_device(name)
    if world_size > 1 and device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {name}: with several processes each one uses its own GPU, cuda:LOCAL_RANK; "
                             "pass --device cuda or auto, and choose the GPUs with CUDA_VISIBLE_DEVICES")  # fmt: skip
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count()))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif world_size > 1 and device.type != "cpu":
        raise ValueError(f"several processes train on cpu (gloo) or cuda (nccl), not {device.type}")
    return device


def init_processes(device: str, timeout_seconds: float) -> None:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT): nccl for CUDA, else gloo. A collective that waits longer than
    ``timeout_seconds`` (another process died) raises instead of hanging."""
    backend = "nccl" if pick_device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))


def _stream_seed(*parts: int) -> int:
    """A seed for a random stream named by ``parts`` (the run's seed, a process, a step)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _to_float32(module: nn.Module, inputs: tuple, output):
    """A forward hook: floating-point outputs (a tensor or a tuple of them) back in float32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, tuple):
        return tuple(_to_float32(module, inputs, item) for item in output)
    return output


class BatchObjective(nn.Module):
    """The loss of one mini-batch as a module, so that DistributedDataParallel can wrap it and
    ``torch.compile`` compile it: :func:`~vae_utils.elbo.elbo` with one z per image drawn from
    ``generator``; returns the mean loss and the (3,) sums of -ELBO, rate and distortion.

    ``bf16=True`` runs the model's networks (its direct submodules) under autocast in bfloat16
    and hands their outputs back in float32: the likelihood, the KL and the sums stay float32.
    ``free_bits`` is passed on to the ELBO (:func:`~vae_utils.elbo.hierarchical_elbo` explains it).
    """

    def __init__(
        self, model: nn.Module, generator: torch.Generator | None, bf16: bool = False, free_bits: float = 0.0
    ) -> None:
        super().__init__()
        self.model, self.generator, self.bf16, self.free_bits = model, generator, bf16, free_bits
        if bf16:
            for network in model.children():
                network.register_forward_hook(_to_float32)

    def forward(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = torch.autocast(x.device.type, torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            out = elbo(self.model, x, beta=beta, generator=self.generator, free_bits=self.free_bits)
        with torch.no_grad():
            sums = torch.stack([-out["elbo"].sum(), out["rate"].sum(), out["distortion"].sum()])
        return out["loss"].mean(), sums


class DivergenceGuard:
    """Stops training at the first step whose loss is NaN or infinite, without a host sync per step.

    Each step ANDs "this loss is finite" into a flag on the device (:meth:`watch`); :meth:`check` reads it,
    every ``every`` steps and at the end of an epoch. When it is down, the epoch is re-run from a snapshot
    taken at its start (weights, optimizer, scheduler, random states), now reading every loss, so that the
    error names the exact step, as a check at every step would. Should the re-run stay finite (GPU kernels
    that are not deterministic), the error names the steps between the last two checks instead.
    """

    def __init__(self, trainer: Trainer, every: int) -> None:
        self.trainer, self.every = trainer, every
        self.all_finite = torch.ones((), dtype=torch.bool, device=trainer.device)
        self.snapshot: dict = {}
        self.checked_step, self.replaying = 0, False

    def start(self) -> None:
        """Remember the trainer's state at the start of an epoch, to re-run the epoch from it."""
        if self.replaying:
            return
        t = self.trainer
        self.snapshot = {
            "model": {name: value.clone() for name, value in t.model.state_dict().items()},
            "optimizer": copy.deepcopy(t.optimizer.state_dict()),
            "scheduler": copy.deepcopy(t.scheduler.state_dict()),
            "batches": t.batches.state_dict(),
            "noise": t.noise.get_state(),
            "step": t.step,
        }
        self.all_finite.fill_(True)
        self.checked_step = t.step

    def watch(self, loss: torch.Tensor) -> None:
        """Note whether the step's loss was finite; every ``every`` steps, :meth:`check`."""
        t = self.trainer
        if self.replaying:  # read every loss now
            value = t.mean_over_processes(loss)
            if not math.isfinite(value):
                raise TrainingDivergedError(f"the loss became {value} at epoch {t.epoch + 1}, step {t.step}. "
                                            + t.divergence_advice())  # fmt: skip
            return
        self.all_finite &= torch.isfinite(loss)
        if (t.step - self.snapshot["step"]) % self.every == 0:
            self.check()

    def check(self) -> None:
        """Read the flag (one host sync); if a loss was not finite, re-run the epoch to name its step."""
        t = self.trainer
        if self.replaying:  # the re-run reads every loss itself
            return
        diverged = (~self.all_finite).to(torch.int32)
        if t.world_size > 1:  # every process re-runs if one diverged
            dist.all_reduce(diverged, op=dist.ReduceOp.MAX)
        if diverged.item():
            self._replay()
        self.checked_step = t.step

    def _replay(self) -> None:
        t, snapshot = self.trainer, self.snapshot
        first, last = self.checked_step + 1, t.step
        t.model.load_state_dict(snapshot["model"])
        t.optimizer.load_state_dict(snapshot["optimizer"])
        t.scheduler.load_state_dict(snapshot["scheduler"])
        t.batches.load_state_dict(snapshot["batches"])
        t.noise.set_state(snapshot["noise"])
        t.step = snapshot["step"]
        self.replaying = True
        try:
            t.train_epoch()  # raises at the first step whose loss is not finite
        finally:
            self.replaying = False
        raise TrainingDivergedError(
            f"the loss became NaN or infinite at epoch {t.epoch + 1}, at one of steps {first} to {last}, but "
            "re-running the epoch from its start gave finite losses throughout (this device's kernels are not "
            "deterministic), so the step cannot be named. " + t.divergence_advice()
        )


# --------------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Trains one model from a :class:`TrainConfig`; ``fit()`` runs (or continues) it to ``config.epochs``.

    >>> trainer = Trainer(TrainConfig(epochs=2, train_subset=2000, out="runs/demo"))
    >>> history = trainer.fit()        # a list of per-epoch dicts, also in runs/demo/log.csv
    """

    LOG_FIELDS = ("epoch", "step", "lr", "beta", "train_nelbo", "train_rate", "train_distortion",
                  "val_nelbo", "val_rate", "val_distortion", "val_bits_per_dim", "epoch_seconds", "train_seconds")  # fmt: skip

    def __init__(self, config: TrainConfig, resume: str | Path | None = None, model: torch.nn.Module | None = None) -> None:
        """``model``: start from these weights instead of fresh ones (e.g. a pruned model, whose masks it keeps)."""
        self.config = config
        self.out = Path(config.out)
        self.rank, self.world_size = process_group()
        self.device = process_device(config.device, self.world_size)
        self._check_speed_options()
        torch.manual_seed(config.seed)  # the initial weights
        self.model = (model if model is not None else MODELS[config.model](**config.model_kwargs())).to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        splits = data.mnist_splits(seed=config.split_seed)
        train_images = splits["train"].images[: config.train_subset or None]
        self._init_weights(train_images)
        # binarized: grey levels go in, every batch is binarized afresh (dynamic binarization)
        self.batches = data.DeviceBatches(
            data.to_tensor(train_images), config.batch_size, seed=config.seed, device=self.device,
            dynamic_binarization=config.data == "binarized", drop_last=config.drop_last,
        )  # fmt: skip
        self._check_shares()
        x_val = data.split_tensor("validation", config.data, seed=config.split_seed)
        self.x_val = x_val[: config.val_subset or None].to(self.device)
        self.noise = self._noise_generator()  # z samples in training
        fused = True if self.device.type == "cuda" else None  # CUDA: one kernel updates all weights
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=fused)
        total_steps = config.epochs * len(self.batches)
        if config.lr_schedule == "cosine" and config.lr_warmup_epochs == 0:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.epoch, self.step, self.best_val, self.history = 0, 0, math.inf, []
        self.objective = self._build_objective()
        self.guard = DivergenceGuard(self, config.nan_check_every)
        # float64 sums as ever; MPS has no float64
        self.sums_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.notes: list[str] = []  # what a resumed run should know (the CLI prints them)
        if resume is not None:
            self._restore(resume)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the logs and checkpoints: process 0, or the only one."""
        return self.rank == 0

    def _check_speed_options(self) -> None:
        config, kind = self.config, self.device.type
        if config.compile == "graphs" and kind != "cuda":
            raise ValueError(f"compile 'graphs' captures CUDA graphs and needs a CUDA device, not {kind}; "
                             "use --compile on")  # fmt: skip
        if config.precision == "bf16" and kind not in ("cpu", "cuda"):
            raise ValueError(f"precision 'bf16' runs on cpu or cuda, not {kind}; use --precision fp32")

    def _check_shares(self) -> None:
        """With several processes every one must get at least one image of every batch."""
        n, size = len(self.batches.x), self.config.batch_size
        smallest = size if self.config.drop_last or n % size == 0 else min(size, n % size)
        if smallest < self.world_size:
            raise ValueError(
                f"{self.world_size} processes share each batch, but a batch of {smallest} images (the epoch's "
                f"last, of {n} images in batches of {size}) cannot give each one an image; use --drop-last "
                "or a larger --batch-size"
            )

    def _noise_generator(self) -> torch.Generator:
        """The generator of the z samples, seeded by :meth:`_noise_seed`. ``compile="graphs"`` uses the
        GPU's default generator: random numbers drawn inside a CUDA graph come from it."""
        if self.config.compile == "graphs":
            generator = torch.cuda.default_generators[self.device.index or torch.cuda.current_device()]
        else:
            generator = torch.Generator(device=self.device)
        return generator.manual_seed(self._noise_seed())

    def _noise_seed(self, step: int | None = None) -> int:
        """seed + 1 in process 0 (or alone); a seed made from (seed, rank) in process rank > 0; with
        ``step``, from (seed, rank, step): for a resume that cannot continue the stored stream."""
        if step is not None:
            return _stream_seed(self.config.seed, self.rank, step)
        return self.config.seed + 1 if self.rank == 0 else _stream_seed(self.config.seed, self.rank)

    def _build_objective(self) -> nn.Module:
        """What a step calls: a :class:`BatchObjective`, inside DistributedDataParallel when there are
        several processes, compiled if asked (``mode="reduce-overhead"`` for CUDA graphs)."""
        config = self.config
        generator = None if config.compile == "graphs" else self.noise  # graphs: the default generator
        objective = BatchObjective(self.model, generator, bf16=config.precision == "bf16", free_bits=config.free_bits)
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            objective = nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
        if config.compile != "off":
            objective = torch.compile(objective, mode="reduce-overhead" if config.compile == "graphs" else None)
        return objective

    def _init_weights(self, train_images) -> None:
        """A warm start (Chapter 8): every weight of the ``config.init_from`` model, which this model must extend
        (a ConvVAE's encoder and decoder in a VampPrior ConvVAE or a HierarchicalVAE of the same sizes); the
        rest keeps its initialisation, and a VampPrior's pseudo-inputs start at random training images. A
        resumed run then loads its own weights over all of these."""
        if self.config.init_from:
            source = load_checkpoint(self.config.init_from)[0].state_dict()
            own = self.model.state_dict()
            misfits = [k for k, v in source.items() if k not in own or own[k].shape != v.shape]
            if misfits:
                raise CheckpointError(
                    f"{self.config.init_from} does not fit into a {type(self.model).__name__} of this config (e.g. "
                    f"{misfits[0]}); --init-from needs a model this one extends, with the same encoder and decoder"
                )
            self.model.load_state_dict(source, strict=False)
        if getattr(self.model, "prior", "standard") == "vamp":
            generator = torch.Generator().manual_seed(self.config.seed)
            pick = torch.randint(len(train_images), (self.config.prior_components,), generator=generator)
            images = data.to_tensor(train_images[pick.numpy()])
            self.model.init_pseudo_inputs(images.to(self.device))

    def _ramp(self, step: int, epochs: float) -> float:
        """A linear warm-up from 0 to 1 over ``epochs`` epochs (1 throughout if
        ``epochs`` is 0)."""
        warmup_steps = epochs * len(self.batches)
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    def lr_factor(self, step: int) -> float:
        """The learning rate at ``step`` over ``config.lr``: a linear warm-up, then the schedule (cosine or constant)."""
        factor = self._ramp(step, self.config.lr_warmup_epochs)
        if self.config.lr_schedule == "cosine":
            factor *= 0.5 * (1 + math.cos(math.pi * step / (self.config.epochs * len(self.batches))))
        return factor

    def beta_at(self, step: int) -> float:
        return self.config.beta * self._ramp(step, self.config.kl_warmup_epochs)

    def _state(self) -> dict:
        """Everything a resume needs. With several processes every one must call it: it gathers their
        z-noise states (the batches' generator is the same in all of them)."""
        rng = {"batches": self.batches.state_dict()["generator"].cpu(), "noise": self.noise.get_state().cpu()}
        if self.world_size > 1:
            rng["noise_by_process"] = [None] * self.world_size
            dist.all_gather_object(rng["noise_by_process"], rng["noise"])
        return make_checkpoint(
            self.model, dataclasses.asdict(self.config), epoch=self.epoch, step=self.step, best_val_nelbo=self.best_val,
            history=self.history, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            rng=rng, processes=self.world_size,
        )  # fmt: skip

    def _restore(self, path: str | Path) -> None:
        model, checkpoint = load_checkpoint(path, self.device)
        if checkpoint.get("optimizer") is None:
            raise CheckpointError(f"{path} holds weights only (a best.pt?); resume from last.pt, which has the run state")
        stored = TrainConfig.from_dict(checkpoint["train_config"] or {})  # normalized like self.config
        free = {"epochs", "out", "progress", "device", "compile", "channels_last", "nan_check_every"}  # may change
        diff = {f.name: (getattr(stored, f.name), getattr(self.config, f.name)) for f in dataclasses.fields(TrainConfig)
                if f.name not in free and getattr(stored, f.name) != getattr(self.config, f.name)}  # fmt: skip
        if diff:
            raise CheckpointError(f"{path} was trained with a different config; differences (stored, given): {diff}")
        self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        total_steps = self.config.epochs * len(self.batches)
        cosine_extended = (isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
                           and self.scheduler.T_max != total_steps)  # fmt: skip
        if cosine_extended:  # --epochs changed; the scheduler's recursive update cannot climb back from 0 by itself
            self.scheduler.T_max = total_steps
        if cosine_extended or isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            # the learning rate of the (new-length) schedule at this step; the scheduler only sets it at the next one
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
                group["lr"] = base * self.lr_factor(self.scheduler.last_epoch)
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.best_val, self.history = checkpoint["best_val_nelbo"], checkpoint["history"]
        self._restore_random_states(checkpoint, path)

    def _restore_random_states(self, checkpoint: dict, path: str | Path) -> None:
        """The batches' and the z noise's generators as stored. A run resumed with another number of
        processes, or on another kind of device, cannot continue the stored streams: it re-seeds them
        from (seed, rank, step), trains on, and says so in :attr:`notes`."""
        rng = checkpoint["rng"]
        noise = rng.get("noise_by_process", [rng["noise"]])
        try:
            self.batches.load_state_dict({"generator": rng["batches"]})
        except RuntimeError:  # a CPU state for a CUDA generator, or the other way round
            self.batches.generator.manual_seed(_stream_seed(self.config.seed, self.step))
            self.notes.append(f"{path} was written on another kind of device: the batches are re-seeded")
        if len(noise) != self.world_size:
            self.noise.manual_seed(self._noise_seed(step=self.step))
            self.notes.append(f"{path} was written by {len(noise)} process(es) and this run has {self.world_size}: "
                              "the batches and the schedules go on exactly, but the z noise of each process is "
                              "re-seeded (from seed, rank and step), so the run will not repeat an uninterrupted "
                              "one to the last bit")  # fmt: skip
        else:
            try:
                self.noise.set_state(noise[self.rank])
            except RuntimeError:
                self.noise.manual_seed(self._noise_seed(step=self.step))
                self.notes.append(f"{path} was written on another kind of device: the z noise is re-seeded")

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training images; returns their mean -ELBO, rate and
        distortion. No step waits for the device: the sums stay on it, and the guard
        reads its NaN/inf flag only every ``config.nan_check_every`` steps."""
        self.model.train()
        self.guard.start()  # a snapshot to re-run the epoch from, should a loss be NaN
        sums = torch.zeros(3, dtype=self.sums_dtype, device=self.device)  # -ELBO, R, D
        count = 0
        for x in self._progress_bar():
            loss, terms = self.batch_loss(x)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip > 0:
                clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            sums += terms
            count += len(x)
            self.guard.watch(loss)  # raises if a loss was NaN or infinite, naming its step
        self.guard.check()  # the epoch's last steps
        return self._epoch_means(sums, count)

    def batch_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise on the mini-batch ``x`` and the (3,) sums of -ELBO, rate
        and distortion over its images, both left on the device.

        With several processes each one computes its share of ``x`` (one of equal
        parts); DistributedDataParallel averages their gradients, so a step is still
        the whole batch's, and ``batch_size`` and ``lr`` mean what they mean alone."""
        share = x.tensor_split(self.world_size)[self.rank] if self.world_size > 1 else x
        if self.config.channels_last:
            share = share.contiguous(memory_format=torch.channels_last)
        if self.config.compile == "graphs":
            torch.compiler.cudagraph_mark_step_begin()
        with value_checks(False):  # the batches are binary or 8-bit by construction
            loss, sums = self.objective(share, self.beta_at(self.step))
        if len(share) * self.world_size != len(x):  # an uneven share weighs by its size
            loss = loss * (len(share) * self.world_size / len(x))
        return loss, sums

    def _progress_bar(self) -> tqdm:
        return tqdm(self.batches, desc=f"epoch {self.epoch + 1}/{self.config.epochs}", leave=False,
                    disable=not self.config.progress or not self.is_main)  # fmt: skip

    def _epoch_means(self, sums: torch.Tensor, count: int) -> dict[str, float]:
        if self.world_size > 1:
            dist.all_reduce(sums)  # every process's share of the images
        nelbo, rate, distortion = (sums / count).tolist()
        return {"train_nelbo": nelbo, "train_rate": rate, "train_distortion": distortion}

    def mean_over_processes(self, value: torch.Tensor) -> float:
        """A scalar tensor averaged over the processes (itself in one process), as a float."""
        if self.world_size == 1:
            return value.item()
        value = value.detach().double().clone()
        dist.all_reduce(value)
        return value.item() / self.world_size

    def divergence_advice(self) -> str:
        return (f"Try a lower --lr (now {self.config.lr}) or a smaller --grad-clip (now {self.config.grad_clip}); "
                f"the last good state is in {self.out / 'last.pt'}")  # fmt: skip

    def validate(self) -> dict[str, float]:
        """The mean -ELBO, rate and distortion of the validation images (one seeded z each). With
        several processes, process 0 computes them and sends them to the others."""
        names = ("nelbo", "rate", "distortion")
        values = [0.0, 0.0, 0.0]
        if self.is_main:
            per_image = per_image_nelbo(self.model, self.x_val, seed=self.config.seed)
            values = [per_image[name].mean().item() for name in names]
        if self.world_size > 1:
            shared = torch.tensor(values, dtype=torch.float64, device=self.device)
            dist.broadcast(shared, src=0)
            values = shared.tolist()
        return dict(zip(names, values))

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train until ``config.epochs``, validating, logging and checkpointing after every epoch.

        ``stop_after=n`` stops once epoch n is done, as if the run were interrupted there (resume continues it).
        """
        if self.is_main:  # process 0 alone writes, always atomically
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = self.out / "config.json.tmp"
            tmp.write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
            os.replace(tmp, self.out / "config.json")
        last_epoch = self.config.epochs if stop_after is None else min(stop_after, self.config.epochs)
        while self.epoch < last_epoch:
            start = time.perf_counter()
            train_metrics = self.train_epoch()
            val = self.validate()
            self.epoch += 1
            seconds = time.perf_counter() - start
            row = {"epoch": self.epoch, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
                   "beta": self.beta_at(self.step - 1), **train_metrics,
                   "val_nelbo": val["nelbo"], "val_rate": val["rate"], "val_distortion": val["distortion"],
                   "val_bits_per_dim": nats_to_bits_per_dim(val["nelbo"]), "epoch_seconds": seconds,
                   "train_seconds": seconds + (self.history[-1]["train_seconds"] if self.history else 0.0)}  # fmt: skip
            self.history.append(row)
            if self.config.progress and self.is_main:
                print(f"epoch {self.epoch:3d}  train -ELBO {row['train_nelbo']:8.3f}  val -ELBO {val['nelbo']:8.3f} "
                      f"nats ({row['val_bits_per_dim']:.4f} bits/dim)  {seconds:5.1f} s", flush=True)  # fmt: skip
            if val["nelbo"] < self.best_val:
                self.best_val = val["nelbo"]
                if self.is_main:
                    save_atomic(make_checkpoint(self.model, dataclasses.asdict(self.config), epoch=self.epoch,
                                                val_nelbo=val["nelbo"]), self.out / "best.pt")  # fmt: skip
            state = self._state()  # in every process: it gathers their random states
            if self.is_main:
                save_atomic(state, self.out / "last.pt")
                self._write_log()
        return self.history

    def _write_log(self) -> None:
        tmp = self.out / "log.csv.tmp"
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.out / "log.csv")


def read_log(run: str | Path) -> dict[str, list]:
    """A run's ``log.csv`` as columns: ``{"epoch": [1, 2, ...], "val_nelbo": [...], ...}``.

    ``run`` is a folder written by ``python -m vae_utils.train`` or its ``log.csv``. ``epoch``
    and ``step`` come back as ints, every other column as floats, so that
    ``plt.plot(log["epoch"], log["val_nelbo"])`` or ``min(log["val_nelbo"])`` work directly.
    """
    path = Path(run)
    path = path / "log.csv" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"no training log at {path}: give a run folder written by python -m vae_utils.train, or its log.csv"
        )
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows, fields = list(reader), reader.fieldnames or []
    if "epoch" not in fields:
        raise ValueError(f"{path} is not a training log: its header {fields} has no 'epoch' column")
    columns = {}
    for name in fields:
        convert = int if name in ("epoch", "step") else float
        try:
            columns[name] = [convert(row[name]) for row in rows]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: column {name!r} holds a value that is not a number") from None
    return columns


# ------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m vae_utils.train",
        description="Train a VAE on the book's embedded MNIST. Writes config.json, log.csv, last.pt and best.pt "
        "into --out. Example: python -m vae_utils.train --data binarized --epochs 100 --out runs/conv",
        epilog="The defaults are the book's basic recipe (Chapter 4). The shipped models in checkpoints/ add to it "
        "(checkpoints/conv_binarized: --encoder-dense-layers 2 --epochs 150 --lr-warmup-epochs 1); to train one of "
        "them again, start from its settings: python -m vae_utils.train --config "
        "checkpoints/conv_binarized/config.json --out runs/conv_binarized. Each checkpoint's command.txt holds the "
        "exact command that made it.",
    )
    p.add_argument("--config", type=Path, help="a JSON file of settings (as written to config.json); flags override it")
    p.add_argument("--resume", type=Path, help="continue a run from its last.pt, exactly as if never stopped")
    p.add_argument("--stop-after", type=int, help="stop once this epoch is done, as if interrupted there: the schedule stays that of --epochs, and --resume continues it (default: run to --epochs)")
    p.add_argument("--data", choices=data.KINDS, help=f"binarized: Bernoulli likelihood, dynamic binarization in training; 8bit: discretized logistic mixture (default {defaults.data})")
    p.add_argument("--model", choices=tuple(MODELS), help=f"conv: ConvVAE; fc: the fully connected FCVAE (the classic 784-400-20 with --hidden-dim 400 --latent-dim 20); hvae: the hierarchical VAE (--latent-dims) (default {defaults.model})")
    p.add_argument("--latent-dim", type=int, help=f"number of latent dimensions (default {defaults.latent_dim})")
    p.add_argument("--channels", type=int, nargs=2, help=f"conv channels after each stride-2 conv (default {defaults.channels})")
    p.add_argument("--hidden-dim", type=int, help=f"width of the dense hidden layer (default {defaults.hidden_dim})")
    p.add_argument("--dense-activation", choices=tuple(DENSE_ACTIVATIONS), help=f"conv only: activation after the hidden dense layers (default {defaults.dense_activation})")
    p.add_argument("--encoder-dense-layers", type=int, help=f"conv only: hidden dense layers in the encoder (default {defaults.encoder_dense_layers})")
    p.add_argument("--prior", choices=PRIORS, help=f"conv only: the prior p(z): standard N(0, I), vamp (VampPrior), mog (mixture of Gaussians) (default {defaults.prior})")
    p.add_argument("--prior-components", type=int, help=f"vamp/mog only: pseudo-inputs or mixture components (default {defaults.prior_components})")
    p.add_argument("--latent-dims", type=int, nargs="+", help=f"hvae only: sizes of the latent layers z_1 ... z_L, bottom first (default {' '.join(map(str, defaults.latent_dims))})")
    p.add_argument("--free-bits", type=float, help=f"nats per latent layer below which its KL is not pushed further down, against posterior collapse; 0 is the plain ELBO (default {defaults.free_bits})")
    p.add_argument("--init-from", help="start from the weights of this checkpoint where the models share them, e.g. a ConvVAE's encoder and decoder in a VampPrior or hierarchical VAE (default: random)")
    p.add_argument("--n-components", type=int, help=f"8bit only: logistic mixture components (default {defaults.n_components})")
    p.add_argument("--epochs", type=int, help=f"total epochs, counting those already done when resuming (default {defaults.epochs})")
    p.add_argument("--batch-size", type=int, help=f"images per step (default {defaults.batch_size})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {defaults.lr})")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), help=f"cosine decays to 0 over the run (default {defaults.lr_schedule})")
    p.add_argument("--lr-warmup-epochs", type=float, help=f"ramp the learning rate linearly from 0 over this many epochs; keeps ReLUs alive early on (default {defaults.lr_warmup_epochs})")
    p.add_argument("--beta", type=float, help=f"weight of the KL (rate) term; 1 is the ELBO (default {defaults.beta})")
    p.add_argument("--kl-warmup-epochs", type=float, help=f"ramp beta linearly from 0 over this many epochs (default {defaults.kl_warmup_epochs})")
    p.add_argument("--grad-clip", type=float, help=f"clip the gradient norm to this; 0 disables (default {defaults.grad_clip})")
    p.add_argument("--seed", type=int, help=f"seed for initial weights, batches and z samples (default {defaults.seed})")
    p.add_argument("--split-seed", type=int, help=f"seed of the train/validation split (default {defaults.split_seed})")
    p.add_argument("--train-subset", type=int, help="use only the first N training images; 0 = all (default 0)")
    p.add_argument("--val-subset", type=int, help="validate on only the first N validation images; 0 = all (default 0)")
    p.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--out", help=f"output folder (default {defaults.out})")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars or per-epoch lines")
    speed = p.add_argument_group("speed (off by default: on the CPU they change the floats or gain nothing; book/scaling.md)")
    speed.add_argument("--compile", choices=COMPILE_MODES, help="on: torch.compile the step; graphs: torch.compile with CUDA graphs, CUDA only (default off)")
    speed.add_argument("--precision", choices=PRECISIONS, help="bf16: the networks under autocast in bfloat16, the ELBO's sums in float32 (default fp32)")
    speed.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="convolutions in NHWC memory layout (default off)")
    speed.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None, help="skip each epoch's last, smaller batch, so every step has one shape (default off)")
    speed.add_argument("--nan-check-every", type=int, help=f"read the NaN/inf flag from the device every N steps and at each epoch's end (default {defaults.nan_check_every})")
    multi = p.add_argument_group("several processes: torchrun --nproc-per-node N -m vae_utils.train ... (book/scaling.md)")
    multi.add_argument("--dist-timeout", type=float, default=600.0, help="seconds a process waits for the others before it stops with an error (default 600)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict = {}
    if args.config is not None:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"error: cannot read --config {args.config}: {error}") from None
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k not in ("config", "resume", "dist_timeout", "stop_after")}
    values.update(overrides)
    if args.resume is not None and args.config is None:
        stored = read_checkpoint(args.resume)["train_config"] or {}  # the config only; Trainer loads the weights
        values = {**stored, **overrides}
    return TrainConfig.from_dict(values)


def describe_run(trainer: Trainer) -> str:
    """The first line a run prints: model, data, device, epochs, and the speed options and processes."""
    config, threads = trainer.config, torch.get_num_threads()
    device = f"{trainer.device} ({threads} thread{'s' * (threads != 1)})" if trainer.device.type == "cpu" else trainer.device
    line = (f"training {type(trainer.model).__name__} ({trainer.model.num_parameters():,} parameters) on "
            f"{config.data} MNIST, device {device}, from epoch {trainer.epoch} to {config.epochs}")  # fmt: skip
    used = [f"compile {config.compile}"] if config.compile != "off" else []
    used += ["bf16"] if config.precision == "bf16" else []
    used += ["channels-last"] if config.channels_last else []
    used += ["drop-last"] if config.drop_last else []
    used += ["fused Adam"] if trainer.device.type == "cuda" else []
    if trainer.world_size > 1:
        used.append(f"{trainer.world_size} processes ({dist.get_backend()}), each ~1/{trainer.world_size} of every "
                    f"batch of {config.batch_size}")  # fmt: skip
    return line + (f"; {', '.join(used)}" if used else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by torchrun with --nproc-per-node > 1
    where = f" (process {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')})" if several else ""
    try:
        config = config_from_args(args)
        if several:
            init_processes(config.device, args.dist_timeout)
        trainer = Trainer(config, resume=args.resume)
        if args.stop_after is not None and args.stop_after < 1:
            raise ValueError(f"--stop-after must be a positive epoch number, got {args.stop_after}")
        if trainer.is_main:
            print(describe_run(trainer), flush=True)
            for note in trainer.notes:
                print(f"note: {note}", flush=True)
        history = trainer.fit(stop_after=args.stop_after)
    except (ValueError, OSError, CheckpointError, TrainingDivergedError) as error:
        print(f"error{where}: {error}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as error:  # DistError is one: a collective failed, another process stopped
        if not several:
            raise
        print(f"error{where}: {str(error).splitlines()[0][:300]}\nThis process stops too; if another process "
              "stopped first, its own error above names the cause", file=sys.stderr, flush=True)  # fmt: skip
        return 2
    finally:
        if several and dist.is_initialized():
            dist.destroy_process_group()
    if not trainer.is_main:
        return 0
    if history:
        best = min(row["val_nelbo"] for row in history)
        print(f"done: best validation -ELBO {best:.3f} nats ({nats_to_bits_per_dim(best):.4f} bits/dim); "
              f"checkpoints in {config.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record  # under torchrun: report a crash's cause

    sys.exit(record(main)())
