"""What the ConvVAE's design choices are worth: validation -ELBO and active units after short runs.

    python benchmarks/architecture.py [--epochs 12] [--seeds 0 1 2] [--json PATH] [--fresh]
    python benchmarks/architecture.py --epochs 1 --train-subset 256 --val-subset 500   (a quick check)

Three variants of the binarized ConvVAE, each trained from the same seeds on the same data:

- ``all ReLU`` (``dense_activation="relu"``): the plain conv VAE, whose dense ReLUs can switch off for good
  (Chapter 4);
- ``ELU`` (``dense_activation="elu"``): ELUs after the hidden dense layers, the package's default;
- ``ELU, 2 encoder layers`` (``encoder_dense_layers=2``): the default with a second hidden dense layer in
  the encoder, which the shipped binarized model has (a deeper encoder can get closer to each image's best
  Gaussian posterior: the amortization gap of Chapter 5).

The recipe is the shipped one (``checkpoints/conv_binarized/config.json``: batch 64, lr 2e-3 with a
1-epoch warm-up and a cosine schedule, all 50,000 training images, dynamic binarization) shortened: --epochs
epochs (12) and a 2-epoch KL warm-up instead of 150 and 5. Every run is scored on the whole validation split
(10,000 images; the test set is not looked at: this is a design decision). Runs go one after the other on
one CPU thread, about 5 minutes each on a quiet core of the book's machine.

Writes ``benchmarks/results/architecture.json`` (--json) after every run: the settings, one row per run
(final validation -ELBO, rate, distortion, active units, the -ELBO after every epoch, seconds per epoch) and a
summary per variant (mean and spread over seeds, and the paired difference to the ELU model, seed by seed).
A run already in the file with the same settings is not repeated, so an interrupted benchmark continues
where it stopped; --fresh starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vae_utils import data
from vae_utils.evaluate import active_units
from vae_utils.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "architecture.json"
VARIANTS = {
    "all ReLU": {"dense_activation": "relu", "encoder_dense_layers": 1},
    "ELU": {"dense_activation": "elu", "encoder_dense_layers": 1},
    "ELU, 2 encoder layers": {"dense_activation": "elu", "encoder_dense_layers": 2},
}
REFERENCE = "ELU"  # the summary's paired differences are to this variant
ACTIVE_THRESHOLD = 0.01  # Burda et al.'s activity threshold


def recipe(epochs: int) -> dict:
    """The shipped binarized recipe, shortened to ``epochs`` epochs with a 2-epoch KL warm-up."""
    shipped = json.loads((ROOT / "checkpoints" / "conv_binarized" / "config.json").read_text())
    for key in ("out", "device", "progress", "seed", "dense_activation", "encoder_dense_layers"):
        shipped.pop(key)
    return shipped | {"epochs": epochs, "kl_warmup_epochs": 2.0}


def train_one(settings: dict, variant: str, seed: int, x_val: torch.Tensor) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_dict(settings | VARIANTS[variant] | {"seed": seed, "out": out,
                                                                        "device": "cpu", "progress": False})
        trainer = Trainer(config)
        start = time.perf_counter()
        history = trainer.fit()
        seconds = time.perf_counter() - start
    with torch.no_grad():
        activity = active_units(trainer.model, x_val)
    last = history[-1]
    return {
        "variant": variant,
        "seed": seed,
        "parameters": trainer.model.num_parameters(),
        "val_nelbo": last["val_nelbo"],
        "val_rate": last["val_rate"],
        "val_distortion": last["val_distortion"],
        "best_val_nelbo": min(row["val_nelbo"] for row in history),
        "active_units": int((activity > ACTIVE_THRESHOLD).sum()),
        "latent_dim": trainer.model.latent_dim,
        "val_nelbo_by_epoch": [row["val_nelbo"] for row in history],
        "seconds_per_epoch": seconds / len(history),
    }


def summarize(runs: list[dict]) -> dict:
    """Mean and spread over seeds per variant, and the paired difference to the reference, seed by seed."""
    summary = {}
    reference = {run["seed"]: run["val_nelbo"] for run in runs if run["variant"] == REFERENCE}
    for variant in VARIANTS:
        rows = [run for run in runs if run["variant"] == variant]
        if not rows:
            continue
        nelbo = [run["val_nelbo"] for run in rows]
        paired = [run["val_nelbo"] - reference[run["seed"]] for run in rows if run["seed"] in reference]
        summary[variant] = {
            "seeds": [run["seed"] for run in rows],
            "val_nelbo_mean": statistics.fmean(nelbo),
            "val_nelbo_sd": statistics.stdev(nelbo) if len(nelbo) > 1 else None,
            "val_nelbo_min": min(nelbo),
            "val_nelbo_max": max(nelbo),
            "active_units": [run["active_units"] for run in rows],
            f"minus_{REFERENCE}_by_seed": paired,
            f"minus_{REFERENCE}_mean": statistics.fmean(paired) if paired else None,
            "parameters": rows[0]["parameters"],
            "seconds_per_epoch_mean": statistics.fmean(run["seconds_per_epoch"] for run in rows),
        }
    return summary


def write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    partial.replace(path)  # atomic: an interrupted write never leaves half a file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train-subset", type=int, default=0, help="first N training images (0: all); for a quick check")
    parser.add_argument("--val-subset", type=int, default=0, help="first N validation images (0: all); for a quick check")
    parser.add_argument("--json", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="ignore runs already in the results file")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    torch.set_num_threads(1)
    settings = recipe(args.epochs) | {"train_subset": args.train_subset, "val_subset": args.val_subset}
    results = {"settings": settings, "runs": []}
    if args.json.exists() and not args.fresh:
        stored = json.loads(args.json.read_text())
        if stored.get("settings") == settings:
            results["runs"] = stored["runs"]
    results |= {
        "command": "python benchmarks/architecture.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread, torch {torch.__version__}",
        "note": "seconds_per_epoch were measured on a machine shared with other jobs",
        "active_threshold": ACTIVE_THRESHOLD,
    }
    x_val = data.split_tensor("validation", "binarized")[: args.val_subset or None]
    results["val_images"] = len(x_val)
    n_train = args.train_subset or len(data.mnist_splits(seed=0)["train"].labels)
    results["train_images"] = n_train
    print(f"ConvVAE, binarized MNIST, {args.epochs} epochs on {n_train:,} training images, "
          f"validated on {len(x_val):,} images")
    print(f"{'variant':22s} {'seed':>4s} {'params':>9s} {'val -ELBO':>9s} {'rate':>6s} "
          f"{'active':>6s} {'s/epoch':>7s}")
    for seed in args.seeds:
        for variant in args.variants:
            run = next((r for r in results["runs"] if (r["variant"], r["seed"]) == (variant, seed)), None)
            if run is None:
                run = train_one(settings, variant, seed, x_val)
                results["runs"].append(run)
                results["summary"] = summarize(results["runs"])
                write(args.json, results)
            print(f"{variant:22s} {seed:4d} {run['parameters']:9,d} {run['val_nelbo']:9.2f} "
                  f"{run['val_rate']:6.2f} {run['active_units']:3d}/{run['latent_dim']} "
                  f"{run['seconds_per_epoch']:7.1f}", flush=True)
    results["summary"] = summarize(results["runs"])
    write(args.json, results)
    print(f"\n{'variant':22s} {'mean -ELBO':>10s} {'sd':>5s} {'minus ' + REFERENCE + ', by seed':>26s}")
    for variant, row in results["summary"].items():
        sd = f"{row['val_nelbo_sd']:5.2f}" if row["val_nelbo_sd"] is not None else f"{'':5s}"
        paired = " ".join(f"{d:+.2f}" for d in row[f"minus_{REFERENCE}_by_seed"])
        print(f"{variant:22s} {row['val_nelbo_mean']:10.2f} {sd} {paired:>26s}")
    print(f"wrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
