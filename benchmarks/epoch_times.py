"""Seconds per epoch of each shipped checkpoint's own training run, on this machine's device, under each
speed option and batch size, side by side.

    python benchmarks/epoch_times.py [--device auto] [--epochs 3] [--runs conv_binarized ...]
        [--variants eager compiled graphs bf16 graphs+bf16] [--batch-sizes own 128 512] [--json FILE]

For every ``checkpoints/*/config.json`` (or those named by ``--runs``) this trains the same configuration
(model, data, schedule) for a few epochs into a temporary folder, once per variant and batch size, and
prints the median epoch time after the first (which pays for start-up: allocation, kernel choice,
compilation, graph capture), the time the whole run would take, and the ratio to eager float32 at the same
batch size. ``own`` is the run's own batch size; another batch size is timed with the run's learning rate
(a real run at that size needs one tuned for it: book/scaling.md). An epoch includes its validation pass.
The variants are those of ``train_throughput.py``; ``graphs`` needs CUDA.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from train_throughput import VARIANTS, machine  # the options, and the device's description

from vae_utils.train import TrainConfig, Trainer, pick_device

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to time per line; the first is not counted")
    parser.add_argument("--runs", nargs="+", help="shipped runs to time (default: all in checkpoints/)")
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=list(VARIANTS))
    parser.add_argument("--batch-sizes", nargs="+", default=["own"], help="'own' (the run's) and/or numbers")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch only warms up")
    try:
        device = pick_device(args.device)
        sizes = [size if size == "own" else int(size) for size in args.batch_sizes]
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    description = machine(device)
    print(f"device: {device} - {description}")
    configs = sorted(ROOT.glob("checkpoints/*/config.json"))
    if args.runs:
        configs = [ROOT / "checkpoints" / run / "config.json" for run in args.runs]
        missing = [str(path) for path in configs if not path.is_file()]
        if missing:
            parser.error(f"no such shipped run: {', '.join(missing)}")
    results = []
    for config_path in configs:
        name, stored = config_path.parent.name, json.loads(config_path.read_text())
        for size in sizes:
            batch_size = stored.get("batch_size", 64) if size == "own" else size
            eager = None
            for variant in args.variants:
                if "graphs" in variant and device.type != "cuda":
                    print(f"{name:16s} batch {batch_size:4d}  {variant:17s} (needs CUDA)", flush=True)
                    continue
                settings = stored | VARIANTS[variant] | {"batch_size": batch_size}
                with tempfile.TemporaryDirectory() as out:
                    config = TrainConfig.from_dict(settings | {"out": out, "device": str(device), "progress": False})
                    history = Trainer(config).fit(stop_after=args.epochs)
                seconds = statistics.median(row["epoch_seconds"] for row in history[1:])
                eager = seconds if variant == "eager" else eager
                ratio = eager / seconds if eager else float("nan")
                results.append({"run": name, "batch_size": batch_size, "variant": variant, "epochs": config.epochs,
                                "median_epoch_seconds": seconds, "projected_minutes": seconds * config.epochs / 60,
                                "speedup_over_eager": ratio})  # fmt: skip
                print(f"{name:16s} batch {batch_size:4d}  {variant:17s} {seconds:6.2f} s per epoch (median of "
                      f"{len(history) - 1}) -> {config.epochs} epochs in about {seconds * config.epochs / 60:5.1f} "
                      f"min, {ratio:5.2f}x eager", flush=True)  # fmt: skip
    if args.json is not None:
        report = {"device": str(device), "machine": description, "timed_epochs": args.epochs - 1, "runs": results}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
