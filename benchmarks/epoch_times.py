"""Seconds per epoch of each shipped checkpoint's own training run, on this machine's device.

    python benchmarks/epoch_times.py [--device auto] [--epochs 3] [--json benchmarks/results/epoch_times_X.json]

For every ``checkpoints/*/config.json`` this trains the same configuration (model, data, batch size, schedule)
for a few epochs into a temporary folder and prints the median epoch time after the first (which pays for
start-up: memory allocation, kernel selection) and the time the whole run would take. It answers "how long
would the shipped runs take here?" without training them; the runs' own logs give the times on the machine
that trained them. An epoch includes its validation pass, as in a real run.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from train_throughput import machine  # the device's description, as that benchmark prints it

from vae_utils.train import TrainConfig, Trainer, pick_device

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to time per run; the first is not counted")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch only warms up")
    try:
        device = pick_device(args.device)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    description = machine(device)
    print(f"device: {device} - {description}")
    results = []
    for config_path in sorted(ROOT.glob("checkpoints/*/config.json")):
        name = config_path.parent.name
        with tempfile.TemporaryDirectory() as out:
            stored = json.loads(config_path.read_text())
            config = TrainConfig.from_dict(stored | {"out": out, "device": str(device), "progress": False})
            history = Trainer(config).fit(stop_after=args.epochs)
        seconds = statistics.median(row["epoch_seconds"] for row in history[1:])
        results.append({"run": name, "epochs": config.epochs, "median_epoch_seconds": seconds,
                        "projected_minutes": seconds * config.epochs / 60})  # fmt: skip
        print(f"{name:16s} {seconds:6.2f} s per epoch (median of {len(history) - 1}) -> "
              f"{config.epochs} epochs in about {seconds * config.epochs / 60:.1f} min", flush=True)  # fmt: skip
    if args.json is not None:
        report = {"device": str(device), "machine": description, "timed_epochs": args.epochs - 1, "runs": results}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
