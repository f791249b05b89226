"""How fast batches come out of a DataLoader and out of DeviceBatches (Chapter 1, Section 1.6).

    python benchmarks/batching.py [--batch-size 128] [--repeats 5] [--json PATH]

Both iterate over the 50,000 training images as one float tensor, in seeded random order, batch 128, on
the CPU; nothing is computed with the batches, so the numbers are the cost of batching alone. Each path is
timed over --repeats full passes and the fastest pass is kept (the least disturbed by other work on the
machine). Writes ``benchmarks/results/batching.json`` (--json) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from vae_utils import data

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "batching.json"


def images_per_second(batches, repeats: int) -> float:
    """Images per second of the fastest of ``repeats`` full passes over ``batches``."""
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(len(batch[0] if isinstance(batch, list) else batch) for batch in batches)
        fastest = min(fastest, time.perf_counter() - start)
    return count / fastest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be at least 1")
    torch.set_num_threads(1)
    x_train = data.to_tensor(data.get_split("train").images)
    paths = {
        "DataLoader": data.make_dataloader(x_train, batch_size=args.batch_size, seed=0),
        "DeviceBatches": data.DeviceBatches(x_train, batch_size=args.batch_size, seed=0),
    }
    speeds = {name: images_per_second(batches, args.repeats) for name, batches in paths.items()}
    results = {
        "command": "python benchmarks/batching.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread, torch {torch.__version__}",
        "images": len(x_train),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "images_per_second": speeds,
        "speedup": speeds["DeviceBatches"] / speeds["DataLoader"],
        "load_average": os.getloadavg()[0],  # other work on the machine while it ran (1 minute)
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    for name, speed in speeds.items():
        print(f"{name:14s} {speed:12,.0f} images/s")
    print(f"DeviceBatches is {results['speedup']:.1f}x faster ({results['machine']}, "
          f"load average {results['load_average']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
