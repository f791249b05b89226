"""Steps per second of the training loop at two commits, on this machine's CPU, taken in turns.

    python benchmarks/step_time_ab.py --before ee7bdea [--rounds 5] [--steps 100] [--threads 1] [--json FILE]

Checks out ``vae_utils`` of the ``--before`` commit into a temporary folder (``git archive``), then times
``Trainer.train_epoch`` of the shipped binarized ConvVAE recipe (``checkpoints/conv_binarized/config.json``,
``--steps`` batches of 64) with the old package and with this working tree's, alternating A, B, A, B, ...
so that a machine whose load drifts disturbs both alike. Each round runs in a fresh process and times its
second epoch (the first warms up). Prints every round and the medians, of steps per second of wall-clock
time and of steps per second of the process's CPU time: on a shared machine the second is the steadier
measure of the work a step costs (with one thread it leaves out only the time spent waiting for a core).
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, tempfile, time, torch
torch.set_num_threads(int(sys.argv[1]))
from vae_utils.train import TrainConfig, Trainer
stored = json.load(open(sys.argv[2]))
with tempfile.TemporaryDirectory() as out:
    config = TrainConfig.from_dict(stored | {"out": out, "device": "cpu", "progress": False,
                                             "train_subset": 64 * int(sys.argv[3]), "val_subset": 1})
    trainer = Trainer(config)
    trainer.train_epoch()
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train_epoch()
    steps = int(sys.argv[3])
    print(steps / (time.perf_counter() - start), steps / (time.process_time() - cpu))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a git revision of this repository")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    config = ROOT / "checkpoints" / "conv_binarized" / "config.json"
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "archive", args.before, "vae_utils", "data"], cwd=ROOT, capture_output=True,
                                 check=True).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(old, filter="data")
        speeds = {"before": [], "after": []}
        cpu_speeds = {"before": [], "after": []}
        for round_ in range(args.rounds):
            for name, path in (("before", old), ("after", str(ROOT))):
                env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads)}
                result = subprocess.run([sys.executable, "-c", PROBE, str(args.threads), str(config), str(args.steps)],
                                        env=env, capture_output=True, text=True, check=True)  # fmt: skip
                wall, cpu = map(float, result.stdout.split()[-2:])
                speeds[name].append(wall)
                cpu_speeds[name].append(cpu)
                print(f"round {round_ + 1} {name:6s} {wall:6.2f} steps/s, {cpu:6.2f} steps per CPU second", flush=True)
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_speeds.items()}
    print(f"median: before ({args.before}) {medians['before']:.2f} steps/s, after {medians['after']:.2f} steps/s "
          f"({medians['after'] / medians['before']:.3f}x); per CPU second: before {cpu_medians['before']:.2f}, "
          f"after {cpu_medians['after']:.2f} ({cpu_medians['after'] / cpu_medians['before']:.3f}x)")  # fmt: skip
    if args.json is not None:
        report = {"before": args.before, "threads": args.threads, "steps": args.steps, "steps_per_second": speeds,
                  "medians": medians, "steps_per_cpu_second": cpu_speeds, "cpu_medians": cpu_medians}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
