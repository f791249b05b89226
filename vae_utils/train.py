"""Training: the loop, checkpoints, resume, devices; ``python -m vae_utils.train`` (Chapter 4).

One :class:`TrainConfig` describes a run completely. The run writes into its output folder:

- ``config.json``  the configuration (re-run it with ``--config config.json``);
- ``log.csv``      one row per epoch: train and validation -ELBO, rate, distortion, learning rate, beta, time;
- ``last.pt``      everything needed to resume exactly (weights, optimizer, scheduler, random states, history);
- ``best.pt``      the weights with the best validation -ELBO so far.

Checkpoints are written atomically (a temporary file, then a rename) and read with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vae_utils import data
from vae_utils.elbo import elbo, nats_to_bits_per_dim
from vae_utils.evaluate import per_image_nelbo
from vae_utils.model import (
    DENSE_ACTIVATIONS,
    FCVAE,
    CheckpointError,
    ConvVAE,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_atomic,
)  # fmt: skip

MODELS = {"conv": ConvVAE, "fc": FCVAE}


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: the book's conv VAE on binarized MNIST."""

    data: str = "binarized"  # "binarized" (dynamic binarization in training) or "8bit"
    model: str = "conv"  # "conv" or "fc"
    latent_dim: int = 32
    channels: tuple[int, int] = (32, 64)  # conv only
    hidden_dim: int = 256
    dense_activation: str = "elu"  # conv only: "elu" or "relu" after the hidden dense layers
    encoder_dense_layers: int = 1  # conv only: hidden dense layers in the encoder (the decoder has one)
    n_components: int = 5  # 8-bit only: logistic mixture components
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
    out: str = "runs/conv_binarized"
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {"data": data.KINDS, "model": tuple(MODELS), "lr_schedule": ("cosine", "constant"),
                   "dense_activation": tuple(DENSE_ACTIVATIONS)}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("train_subset", "val_subset", "seed", "split_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        for name in ("epochs", "batch_size", "latent_dim", "hidden_dim", "n_components", "encoder_dense_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr", "beta", "kl_warmup_epochs", "grad_clip", "lr_warmup_epochs"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be positive")
        self.channels = tuple(self.channels)

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
        if self.model == "conv":
            kwargs |= {"channels": self.channels, "dense_activation": self.dense_activation,
                       "encoder_dense_layers": self.encoder_dense_layers}
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


# --------------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Trains one model from a :class:`TrainConfig`; ``fit()`` runs (or continues) it to ``config.epochs``.

    >>> trainer = Trainer(TrainConfig(epochs=2, train_subset=2000, out="runs/demo"))
    >>> history = trainer.fit()        # a list of per-epoch dicts, also in runs/demo/log.csv
    """

    LOG_FIELDS = ("epoch", "step", "lr", "beta", "train_nelbo", "train_rate", "train_distortion",
                  "val_nelbo", "val_rate", "val_distortion", "val_bits_per_dim", "epoch_seconds", "train_seconds")  # fmt: skip

    def __init__(self, config: TrainConfig, resume: str | Path | None = None) -> None:
        self.config = config
        self.out = Path(config.out)
        self.device = pick_device(config.device)
        torch.manual_seed(config.seed)  # the initial weights
        self.model = MODELS[config.model](**config.model_kwargs()).to(self.device)
        splits = data.mnist_splits(seed=config.split_seed)
        train_images = splits["train"].images[: config.train_subset or None]
        # binarized: grey levels go in, every batch is binarized afresh (dynamic binarization)
        self.batches = data.DeviceBatches(
            data.to_tensor(train_images), config.batch_size, seed=config.seed, device=self.device,
            dynamic_binarization=config.data == "binarized",
        )  # fmt: skip
        x_val = data.split_tensor("validation", config.data, seed=config.split_seed)
        self.x_val = x_val[: config.val_subset or None].to(self.device)
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed + 1)  # z samples in training
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        total_steps = config.epochs * len(self.batches)
        if config.lr_schedule == "cosine" and config.lr_warmup_epochs == 0:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.epoch, self.step, self.best_val, self.history = 0, 0, math.inf, []
        if resume is not None:
            self._restore(resume)

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
        return make_checkpoint(
            self.model, dataclasses.asdict(self.config), epoch=self.epoch, step=self.step, best_val_nelbo=self.best_val,
            history=self.history, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            rng={"batches": self.batches.state_dict()["generator"].cpu(), "noise": self.noise.get_state().cpu()},
        )  # fmt: skip

    def _restore(self, path: str | Path) -> None:
        model, checkpoint = load_checkpoint(path, self.device)
        if checkpoint.get("optimizer") is None:
            raise CheckpointError(f"{path} holds weights only (a best.pt?); resume from last.pt, which has the run state")
        stored = TrainConfig.from_dict(checkpoint["train_config"] or {})  # normalized like self.config
        free = {"epochs", "out", "progress", "device"}  # may change on resume
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
        self.batches.load_state_dict({"generator": checkpoint["rng"]["batches"]})
        self.noise.set_state(checkpoint["rng"]["noise"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.best_val, self.history = checkpoint["best_val_nelbo"], checkpoint["history"]

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        sums, count = torch.zeros(3, dtype=torch.float64), 0
        bar = tqdm(self.batches, desc=f"epoch {self.epoch + 1}/{self.config.epochs}", leave=False,
                   disable=not self.config.progress)  # fmt: skip
        for x in bar:
            out = elbo(self.model, x, beta=self.beta_at(self.step), generator=self.noise)
            loss = out["loss"].mean()
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}. Try a lower "
                    f"--lr (now {self.config.lr}) or a smaller --grad-clip (now {self.config.grad_clip}); "
                    f"the last good state is in {self.out / 'last.pt'}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            with torch.no_grad():
                sums += torch.stack([-out["elbo"].sum(), out["rate"].sum(), out["distortion"].sum()]).double().cpu()
            count += len(x)
            bar.set_postfix(nelbo=f"{sums[0].item() / count:.2f}")
        nelbo, rate, distortion = (sums / count).tolist()
        return {"train_nelbo": nelbo, "train_rate": rate, "train_distortion": distortion}

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train until ``config.epochs``, validating, logging and checkpointing after every epoch.

        ``stop_after=n`` stops once epoch n is done, as if the run were interrupted there (resume continues it).
        """
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        last_epoch = self.config.epochs if stop_after is None else min(stop_after, self.config.epochs)
        while self.epoch < last_epoch:
            start = time.perf_counter()
            train_metrics = self.train_epoch()
            val = {name: values.mean().item()
                   for name, values in per_image_nelbo(self.model, self.x_val, seed=self.config.seed).items()}
            self.epoch += 1
            seconds = time.perf_counter() - start
            row = {"epoch": self.epoch, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
                   "beta": self.beta_at(self.step - 1), **train_metrics,
                   "val_nelbo": val["nelbo"], "val_rate": val["rate"], "val_distortion": val["distortion"],
                   "val_bits_per_dim": nats_to_bits_per_dim(val["nelbo"]), "epoch_seconds": seconds,
                   "train_seconds": seconds + (self.history[-1]["train_seconds"] if self.history else 0.0)}  # fmt: skip
            self.history.append(row)
            if self.config.progress:
                print(f"epoch {self.epoch:3d}  train -ELBO {row['train_nelbo']:8.3f}  val -ELBO {val['nelbo']:8.3f} "
                      f"nats ({row['val_bits_per_dim']:.4f} bits/dim)  {seconds:5.1f} s", flush=True)  # fmt: skip
            if val["nelbo"] < self.best_val:
                self.best_val = val["nelbo"]
                save_atomic(make_checkpoint(self.model, dataclasses.asdict(self.config), epoch=self.epoch, val_nelbo=val["nelbo"]),
                            self.out / "best.pt")  # fmt: skip
            save_atomic(self._state(), self.out / "last.pt")
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
    p.add_argument("--data", choices=data.KINDS, help=f"binarized: Bernoulli likelihood, dynamic binarization in training; 8bit: discretized logistic mixture (default {defaults.data})")
    p.add_argument("--model", choices=tuple(MODELS), help=f"conv: ConvVAE; fc: the fully connected FCVAE (the classic 784-400-20 with --hidden-dim 400 --latent-dim 20) (default {defaults.model})")
    p.add_argument("--latent-dim", type=int, help=f"number of latent dimensions (default {defaults.latent_dim})")
    p.add_argument("--channels", type=int, nargs=2, help=f"conv channels after each stride-2 conv (default {defaults.channels})")
    p.add_argument("--hidden-dim", type=int, help=f"width of the dense hidden layer (default {defaults.hidden_dim})")
    p.add_argument("--dense-activation", choices=tuple(DENSE_ACTIVATIONS), help=f"conv only: activation after the hidden dense layers (default {defaults.dense_activation})")
    p.add_argument("--encoder-dense-layers", type=int, help=f"conv only: hidden dense layers in the encoder (default {defaults.encoder_dense_layers})")
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
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict = {}
    if args.config is not None:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"error: cannot read --config {args.config}: {error}") from None
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "resume")}
    values.update(overrides)
    if args.resume is not None and args.config is None:
        stored = read_checkpoint(args.resume)["train_config"] or {}  # the config only; Trainer loads the weights
        values = {**stored, **overrides}
    return TrainConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        trainer = Trainer(config, resume=args.resume)
        threads = torch.get_num_threads()
        device = f"{trainer.device} ({threads} thread{'s' * (threads != 1)})" if trainer.device.type == "cpu" else trainer.device
        print(f"training {type(trainer.model).__name__} ({trainer.model.num_parameters():,} parameters) on "
              f"{config.data} MNIST, device {device}, from epoch {trainer.epoch} to {config.epochs}", flush=True)  # fmt: skip
        history = trainer.fit()
    except (ValueError, FileNotFoundError, CheckpointError, TrainingDivergedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if history:
        best = min(row["val_nelbo"] for row in history)
        print(f"done: best validation -ELBO {best:.3f} nats ({nats_to_bits_per_dim(best):.4f} bits/dim); "
              f"checkpoints in {config.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
