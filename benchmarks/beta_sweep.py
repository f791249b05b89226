"""The rate-distortion sweep of Chapter 4 (Section 4.5), short and long: does beta = 1 win with enough training?

    python benchmarks/beta_sweep.py [--betas 0.25 0.5 1 2 4 8] [--epochs 5 50] [--seeds 0 1 2]
                                    [--jobs 1] [--json benchmarks/results/beta_sweep.json]

Every run is the chapter's sweep setting, trained with ``python -m vae_utils.train`` on one CPU thread:
the fully connected VAE (32 latent dimensions, a hidden layer of 256 units) on the first 10,000 training
images, batches of 128, lr 3e-3, no KL warm-up, a cosine schedule over ``--epochs``, validated on the first
1,000 validation images. Only the length of the run and the seed change, so a beta that wins the short
runs and loses the long ones won because the runs were short.

For every run the script records the final validation rate, distortion and -ELBO (the beta = 1 numbers,
whatever beta trained the model), the final training -ELBO, the active units, the units that carry more
than 0.1 nats, and the rate of every latent unit. A 5-epoch run takes about 10 s on one core of the book's
2-core CPU, a 50-epoch run about a minute.
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
from vae_utils.elbo import gaussian_kl
from vae_utils.evaluate import active_units
from vae_utils.model import load_checkpoint
from vae_utils.train import read_log

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "model": "fc",
    "latent_dim": 32,
    "hidden_dim": 256,
    "train_subset": 10_000,
    "val_subset": 1000,
    "batch_size": 128,
    "lr": 3e-3,
    "kl_warmup_epochs": 0,
}


def command(beta: float, epochs: int, seed: int, out: str) -> list[str]:
    flags = SETTINGS | {"beta": beta, "epochs": epochs, "seed": seed, "out": out}
    options = [f"--{key.replace('_', '-')}={value}" for key, value in flags.items()]
    return [sys.executable, "-m", "vae_utils.train", *options, "--no-progress"]


@torch.no_grad()
def unit_rates(model, x: torch.Tensor) -> list[float]:
    """The mean over images of KL(q(z_u | x) || N(0, 1)) of every latent unit u, in nats."""
    mu, logvar = model.eval().encode(x)
    return [gaussian_kl(mu[:, [u]], logvar[:, [u]]).mean().item() for u in range(mu.shape[1])]


def run(beta: float, epochs: int, seed: int, x_val: torch.Tensor) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        done = subprocess.run(command(beta, epochs, seed, out), capture_output=True, text=True, env=env, cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"the run beta={beta} epochs={epochs} seed={seed} failed:\n{done.stdout}{done.stderr}")
        log = read_log(out)
        model, _ = load_checkpoint(Path(out) / "last.pt")  # the final weights
    rates = unit_rates(model, x_val)
    return {
        "beta": beta,
        "epochs": epochs,
        "seed": seed,
        "rate": log["val_rate"][-1],
        "distortion": log["val_distortion"][-1],
        "nelbo": log["val_nelbo"][-1],
        "best_val_nelbo": min(log["val_nelbo"]),
        "train_nelbo": log["train_nelbo"][-1],
        "active_units": int((active_units(model, x_val) > 0.01).sum()),
        "units_over_0.1_nats": sum(r > 0.1 for r in rates),
        "unit_rates": rates,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4, 8])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each (default 1)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "beta_sweep.json")
    args = parser.parse_args()
    if args.jobs < 1 or min(args.epochs) < 1 or min(args.seeds) < 0 or min(args.betas) <= 0:
        parser.error("--jobs and --epochs must be at least 1, --seeds non-negative, --betas positive")
    torch.set_num_threads(1)
    x_val = data.split_tensor("validation", "binarized")[: SETTINGS["val_subset"]]
    cells = list(itertools.product(args.epochs, args.seeds, args.betas))
    start = time.perf_counter()
    print(f"{len(cells)} runs, {args.jobs} at a time")
    print(
        f"{'epochs':>6s} {'seed':>4s} {'beta':>5s} {'rate':>7s} {'distortion':>10s} {'-ELBO':>7s} "
        f"{'train -ELBO':>11s} {'active':>6s} {'> 0.1 nats':>10s} {'seconds':>7s}"
    )
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda cell: run(cell[2], cell[0], cell[1], x_val), cells):
            print(
                f"{r['epochs']:6d} {r['seed']:4d} {r['beta']:5.2f} {r['rate']:7.2f} {r['distortion']:10.2f} "
                f"{r['nelbo']:7.2f} {r['train_nelbo']:11.2f} {r['active_units']:6d} "
                f"{r['units_over_0.1_nats']:10d} {r['seconds']:7.1f}",
                flush=True,
            )
            results.append(r)
    example = command(args.betas[0], args.epochs[0], args.seeds[0], "OUT")
    report = {
        "what": "Chapter 4's beta sweep (FCVAE 784-256-32, 10,000 training images, batch 128, lr 3e-3, no KL "
        "warm-up) at several run lengths and seeds, trained with python -m vae_utils.train on one thread",
        "settings": SETTINGS,
        "command_of_a_run": "OMP_NUM_THREADS=1 python " + " ".join(example[1:]),
        "script": " ".join(["python benchmarks/beta_sweep.py", *sys.argv[1:]]),
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
