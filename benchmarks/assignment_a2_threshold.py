"""How safe is the validation threshold of assignment A2? Train the reference solution,
other correct designs and the wrong solutions of ``assignments/mutants.py`` over several
seeds, exactly as the notebook does, and measure each one's validation -ELBO.

    python benchmarks/assignment_a2_threshold.py [--seeds 0 1 2 3 4] [--out FILE]

Each run executes the code cells of ``assignments/source/a2_conv_vae/a2_conv_vae.ipynb``
up to its training cell (with the seed set in the set-up cell; the test cells are
skipped) in a fresh Python process on one CPU thread, then computes the validation
-ELBO as the notebook's task 4 test does. Prints a table and writes
``benchmarks/results/assignment_a2_threshold.json``: every run's -ELBO and training time,
and per variant the range over seeds and its margin to the threshold. Runs already in
that file are kept, so ``--variants`` can add a few at a time. One run trains for about
half a minute of CPU time; on the book's 2-core machine shared with other jobs, each
took 2-4 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent
SOURCE = BOOK / "assignments" / "source" / "a2_conv_vae" / "a2_conv_vae.ipynb"
sys.path.insert(0, str(BOOK / "assignments"))
from mutants import MUTANTS, mutate

ALTERNATIVES = {
    "ReLU everywhere": [("nn.Linear(32 * 7 * 7, 128), nn.ELU()", "nn.Linear(32 * 7 * 7, 128), nn.ReLU()"),
                        ("nn.Linear(latent_dim, 128), nn.ELU()", "nn.Linear(latent_dim, 128), nn.ReLU()"),
                        ("nn.Linear(128, 32 * 7 * 7), nn.ELU()", "nn.Linear(128, 32 * 7 * 7), nn.ReLU()")],
    "narrow (8 and 16 channels, 64 units)": [
        ("nn.Conv2d(1, 16, 4", "nn.Conv2d(1, 8, 4"),
        ("nn.Conv2d(16, 32, 4", "nn.Conv2d(8, 16, 4"),
        ("nn.Linear(32 * 7 * 7, 128), nn.ELU(),\n            nn.Linear(128, 2 * latent_dim)",
         "nn.Linear(16 * 7 * 7, 64), nn.ELU(),\n            nn.Linear(64, 2 * latent_dim)"),
        ("nn.Linear(latent_dim, 128), nn.ELU(),\n            nn.Linear(128, 32 * 7 * 7)",
         "nn.Linear(latent_dim, 64), nn.ELU(),\n            nn.Linear(64, 16 * 7 * 7)"),
        ("nn.Unflatten(1, (32, 7, 7))", "nn.Unflatten(1, (16, 7, 7))"),
        ("nn.ConvTranspose2d(32, 16, 4", "nn.ConvTranspose2d(16, 8, 4"),
        ("nn.ConvTranspose2d(16, 1, 4", "nn.ConvTranspose2d(8, 1, 4"),
    ],
}
CORRECT = {"reference solution": [], **ALTERNATIVES}

ONE_RUN = """
import json, math, sys, time, torch
torch.set_num_threads(1)
import matplotlib
matplotlib.use("Agg")
cells = json.loads(sys.stdin.read())
namespace = {}
for source in cells:
    exec(compile(source, "<cell>", "exec"), namespace)
from vae_utils import elbo as reference
with torch.no_grad():
    x_val, model, gen = namespace["x_val"], namespace["model"], namespace["gen"]
    nats = -reference.elbo(model, x_val, generator=gen(0))["elbo"].mean().item()
print(json.dumps({"nats": nats if math.isfinite(nats) else None,
                  "seconds": namespace["seconds"]}))
"""


def cells_for(replacements, seed: int) -> list[str]:
    """The code cells to run: set-up (with this seed) to training; tests and figures left out."""
    nb = mutate(json.loads(SOURCE.read_text()), replacements)
    cells = []
    for cell in nb["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if cell["cell_type"] != "code" or meta.get("grade"):
            continue
        source = "".join(cell["source"])
        if meta.get("grade_id") == "setup":
            source, n = re.subn(r"^SEED = \d+", f"SEED = {seed}", source, flags=re.MULTILINE)
            assert n == 1, "the set-up cell must set SEED"
        cells.append(source)
        if meta.get("grade_id") == "training":
            return cells
    raise ValueError("no training cell in the A2 source notebook")


def run(replacements, seed: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", ONE_RUN], input=json.dumps(cells_for(replacements, seed)),
                            capture_output=True, text=True, cwd=BOOK, env=env, check=False)
    if result.returncode != 0:
        return {"nats": None, "seconds": None, "error": result.stderr.strip().splitlines()[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def notebook_threshold() -> float:
    """THRESHOLD as the notebook's set-up cell sets it."""
    setup = next(c for c in json.loads(SOURCE.read_text())["cells"]
                 if c["metadata"].get("nbgrader", {}).get("grade_id") == "setup")
    return float(re.search(r"^THRESHOLD = ([0-9.]+)", "".join(setup["source"]), flags=re.MULTILINE).group(1))


def summarize(runs: dict, threshold: float) -> dict:
    """Per variant: the range over seeds, and the margin to the threshold (correct: how far
    below it the worst seed ends; wrong: how far above it the best one ends). A run that
    ended in nan counts as infinitely bad; its numbers are None."""
    summary = {}
    for name, entry in runs.items():
        values = [r["nats"] if r["nats"] is not None else math.inf for r in entry["runs"].values()]
        low, high = min(values), max(values)
        margin = threshold - high if entry["kind"] == "correct" else low - threshold
        numbers = {"min_nats": low, "max_nats": high, "margin_nats": margin}
        summary[name] = {"kind": entry["kind"], **{k: v if math.isfinite(v) else None for k, v in numbers.items()}}
    return summary


def show(summary: dict, threshold: float, seeds) -> None:
    def fmt(v):
        return f"{v:8.2f}" if v is not None else f"{'nan':>8s}"

    print(f"\nthreshold {threshold:g} nats; validation -ELBO over seeds {list(seeds)} (runs per variant: "
          "see the JSON):")
    print(f"{'variant':38s} {'kind':7s} {'min':>8s} {'max':>8s} {'margin':>8s}")
    for name, s in summary.items():
        print(f"{name:38s} {s['kind']:7s} {fmt(s['min_nats'])} {fmt(s['max_nats'])} {fmt(s['margin_nats'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=BOOK / "benchmarks" / "results" / "assignment_a2_threshold.json")
    parser.add_argument("--variants", nargs="+", help="run only these variants (default: all)")
    parser.add_argument("--summarize", action="store_true",
                        help="only recompute the summary of --out against the notebook's current THRESHOLD")
    args = parser.parse_args()
    threshold = notebook_threshold()
    variants = {**{name: ("correct", r) for name, r in CORRECT.items()},
                **{name: ("wrong", r) for name, r in MUTANTS["a2_conv_vae"].items()}}
    unknown = sorted(set(args.variants or []) - set(variants))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(variants)}")
    # runs already in --out are kept: the benchmark can be run a few variants at a time
    runs = json.loads(args.out.read_text())["runs"] if args.out.is_file() else {}
    if not args.summarize:
        for seed in args.seeds:  # every variant once before the next seed: early numbers for all
            for name in args.variants or variants:
                kind, replacements = variants[name]
                entry = runs.setdefault(name, {"kind": kind, "runs": {}})
                entry["runs"][str(seed)] = result = run(replacements, seed)
                print(f"{name:38s} seed {seed}: {result}", flush=True)
    runs = {name: runs[name] for name in variants if name in runs}  # in the order of the table
    seeds = sorted({int(seed) for entry in runs.values() for seed in entry["runs"]})
    summary = summarize(runs, threshold)
    show(summary, threshold, seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threshold_nats": threshold, "seeds": seeds, "threads": 1,
                                    "machine": "2 CPU cores, shared with other jobs (load average about 17-22)",
                                    "summary": summary,
                                    "runs": runs}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
