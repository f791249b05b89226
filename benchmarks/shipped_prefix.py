"""Re-run the first epochs of a shipped run and compare them with its log.csv, column by column.

    python benchmarks/shipped_prefix.py [--run conv_binarized] [--epochs 2] [--threads 2]

The shipped run's own config.json is used unchanged (so the learning-rate and KL schedules are those of
the full run) and training stops after ``--epochs`` epochs, as an interrupted run would. Every logged
number but the times must come out exactly equal: this is how a change to the training loop proves that
it leaves the CPU's arithmetic alone. Use the thread count the shipped run used (its train_stdout.txt
says; floating-point sums depend on it). Exits 1 if any number differs.
"""

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import torch

from vae_utils.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="conv_binarized", help="a folder in checkpoints/")
    parser.add_argument("--epochs", type=int, default=2, help="how many epochs to re-run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the shipped run's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = ROOT / "checkpoints" / args.run
    shipped = list(csv.DictReader(open(run / "log.csv")))[: args.epochs]
    stored = json.loads((run / "config.json").read_text())
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_dict(stored | {"out": out, "device": "cpu", "progress": False})
        history = Trainer(config).fit(stop_after=args.epochs)
    differences = 0
    for row, again in zip(shipped, history):
        for column, text in row.items():
            if "seconds" in column:
                continue
            value = type(again[column])(text)  # the csv holds repr(float): exact
            same = value == again[column]
            differences += not same
            print(f"epoch {row['epoch']:>3} {column:18s} shipped {text:>22s}  now {again[column]!r:>22}"
                  f"  {'equal' if same else 'DIFFERENT'}")  # fmt: skip
        print(f"epoch {row['epoch']:>3} took {again['epoch_seconds']:.1f} s (shipped: {float(row['epoch_seconds']):.1f} s)")
    print(f"{differences} of {len(shipped) * (len(shipped[0]) - 2)} numbers differ")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
