"""Posterior collapse by design: dense activation (ReLU, ELU) x KL warm-up (off, on), several seeds.

    python benchmarks/collapse.py [--seeds 0 1 2 3 4] [--lrs 3e-3 2e-3] [--jobs 1]
                                  [--json benchmarks/results/collapse.json]

Every run is the short run of Chapter 4 (Section 4.3), trained with the command line tool,
``python -m vae_utils.train``, on one CPU thread: the ConvVAE on the first 3,000 training images for
8 epochs, batches of 64, a cosine schedule, validated on the first 1,000 validation images. Four cells,
each for every seed and learning rate:

- ``--dense-activation relu`` or ``elu`` (the book's default) after the hidden dense layers;
- ``--kl-warmup-epochs 0`` (beta = 1 from the first step) or ``3`` (beta ramps up over 3 epochs).

Chapter 4's run uses lr 3e-3, larger than the default 2e-3; both are run. For every run the script
records the validation -ELBO and rate after each epoch (from the run's log.csv), and, from the final
weights, the active units (Burda et al.'s criterion, on the same 1,000 images) and the live ReLU channels
of the encoder. A run counts as collapsed when its final validation rate is below 5 nats (a healthy run
of this length has about 20). Each run takes about 15 s on one core of the book's 2-core CPU; ``--jobs``
runs several at once (use it only where cores are free).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from vae_utils import data
from vae_utils.evaluate import active_units, live_relus
from vae_utils.model import load_checkpoint
from vae_utils.train import read_log

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"train_subset": 3000, "val_subset": 1000, "epochs": 8, "batch_size": 64}
WARMUP_EPOCHS = 3
COLLAPSED_BELOW_NATS = 5.0


def command(activation: str, warmup: float, lr: float, seed: int, out: str) -> list[str]:
    flags = {f"--{key.replace('_', '-')}": value for key, value in SETTINGS.items()}
    flags |= {"--dense-activation": activation, "--kl-warmup-epochs": warmup, "--lr": lr, "--seed": seed}
    options = [f"{key}={value}" for key, value in flags.items()]
    return [sys.executable, "-m", "vae_utils.train", *options, f"--out={out}", "--no-progress"]


def run(activation: str, warmup: float, lr: float, seed: int, x_val: torch.Tensor) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        argv = command(activation, warmup, lr, seed, out)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"the run {activation}/{warmup}/{lr}/{seed} failed:\n{done.stdout}{done.stderr}")
        log = read_log(out)
        model, _ = load_checkpoint(Path(out) / "last.pt")  # the final weights
    activity = active_units(model, x_val)
    return {
        "activation": activation,
        "kl_warmup_epochs": warmup,
        "lr": lr,
        "seed": seed,
        "val_nelbo": log["val_nelbo"],
        "val_rate": log["val_rate"],
        "final_val_nelbo": log["val_nelbo"][-1],
        "final_val_rate": log["val_rate"][-1],
        "final_val_distortion": log["val_distortion"][-1],
        "collapsed": log["val_rate"][-1] < COLLAPSED_BELOW_NATS,
        "active_units": int((activity > 0.01).sum()),
        "live_relus": live_relus(model, x_val),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 2e-3])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each (default 1)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "collapse.json")
    args = parser.parse_args()
    if args.jobs < 1 or min(args.seeds) < 0 or min(args.lrs) <= 0:
        parser.error("--jobs must be at least 1, --seeds non-negative, --lrs positive")
    torch.set_num_threads(1)
    x_val = data.split_tensor("validation", "binarized")[: SETTINGS["val_subset"]]
    cells = list(itertools.product(args.lrs, ("relu", "elu"), (0, WARMUP_EPOCHS), args.seeds))
    start = time.perf_counter()
    print(f"{len(cells)} runs, {args.jobs} at a time")
    print(
        f"{'lr':>6s} {'dense':>5s} {'warm-up':>7s} {'seed':>4s} {'val -ELBO':>9s} {'val rate':>8s} "
        f"{'active':>6s} {'live ReLUs':>32s} {'seconds':>7s}"
    )
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda cell: run(cell[1], cell[2], cell[0], cell[3], x_val), cells):
            relus = ", ".join(f"{name} {live}/{total}" for name, (live, total) in r["live_relus"].items())
            print(
                f"{r['lr']:6.0e} {r['activation']:>5s} {r['kl_warmup_epochs']:7d} {r['seed']:4d} "
                f"{r['final_val_nelbo']:9.2f} {r['final_val_rate']:8.2f} {r['active_units']:6d} "
                f"{relus:>32s} {r['seconds']:7.1f}",
                flush=True,
            )
            results.append(r)
    example = command("relu", 0, args.lrs[0], args.seeds[0], "OUT")
    report = {
        "what": "Chapter 4's short run (ConvVAE, 3,000 training images, 8 epochs) for dense activation "
        "x KL warm-up x learning rate x seed, trained with python -m vae_utils.train on one thread",
        "settings": SETTINGS
        | {"warmup_epochs_when_on": WARMUP_EPOCHS, "collapsed_when_final_val_rate_below_nats": COLLAPSED_BELOW_NATS},
        "command_of_a_run": "OMP_NUM_THREADS=1 python " + " ".join(example[1:]),
        "script": " ".join(["python benchmarks/collapse.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, 1 torch thread per run, {args.jobs} run(s) at a time, "
        f"torch {torch.__version__}",
        "minutes": (time.perf_counter() - start) / 60,
        "runs": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json} in {report['minutes']:.1f} min")


if __name__ == "__main__":
    main()
