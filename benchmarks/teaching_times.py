"""How long each chapter and each assignment takes to run, for the teacher's guide.

    python benchmarks/teaching_times.py [--only NAME ...] [--out FILE]

Runs every chapter (``notebooks/*.ipynb``) and the solution of every assignment
(``assignments/source/<id>/<id>.ipynb``, with its hidden tests) top to bottom on a fresh
kernel with ``jupyter nbconvert --execute`` (the outputs go to a scratch folder; nothing
in the book changes), one after the other, and writes
``benchmarks/results/teaching_times.json``: for each notebook the wall-clock seconds and
the CPU seconds of the kernel (all its threads), and the machine's load average before and
after. On a quiet machine the wall time is what a student waits; on a shared one it
grows with the other jobs, while the CPU time stays close to what the work needs.
``book/teaching.md`` prints these numbers (``tests/test_assignments.py`` checks it does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent
OUT = BOOK / "benchmarks" / "results" / "teaching_times.json"


def notebooks() -> dict[str, Path]:
    chapters = {p.stem: p for p in sorted((BOOK / "notebooks").glob("*.ipynb"))}
    assignments = {p.stem: p for p in sorted((BOOK / "assignments" / "source").glob("*/*.ipynb"))
                   if p.stem == p.parent.name}
    return {**chapters, **assignments}


def time_notebook(path: Path, scratch: Path) -> dict:
    """Execute one notebook in its own folder with nbconvert; wall and CPU seconds."""
    jupyter = Path(sys.executable).parent / "jupyter"
    command = [str(jupyter), "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(scratch),
               "--ExecutePreprocessor.timeout=1800", str(path)]
    before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=path.parent, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after_cpu.ru_utime - before_cpu.ru_utime) + (after_cpu.ru_stime - before_cpu.ru_stime)
    entry = {"path": str(path.relative_to(BOOK)), "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
             "load_average_before": round(load_before, 1), "load_average_after": round(os.getloadavg()[0], 1),
             "ok": result.returncode == 0, "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    if result.returncode != 0:
        entry["error"] = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
    return entry


TITLES = {"a1_elbo": "A1 (solution)", "a2_conv_vae": "A2 (solution)", "a3_iwae": "A3 (solution)",
          "a4_bits_back": "A4 (solution)"}


def markdown_table(results: dict) -> str:
    """The table of ``book/teaching.md``: one row per notebook, wall-clock and CPU minutes."""
    rows = ["| notebook | wall clock | CPU time |", "|---|---|---|"]
    for name, entry in sorted(results["notebooks"].items()):  # chapters 01..06, then A1..A4
        if name in TITLES:  # the website shows the student version, not the source with solutions
            link = f"{{doc}}`{TITLES[name]} <../assignments/release/{name}/{name}>`"
        else:
            link = f"{{doc}}`Chapter {int(name[:2])} <../{entry['path'].removesuffix('.ipynb')}>`"
        rows.append(f"| {link} | {entry['wall_seconds'] / 60:.1f} min | {entry['cpu_seconds']:.0f} s |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="notebook names (e.g. 03_elbo a1_elbo); default: all")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the table of book/teaching.md from --out")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.out.read_text())))
        return
    chosen = notebooks()
    if args.only:
        unknown = sorted(set(args.only) - set(chosen))
        if unknown:
            parser.error(f"unknown notebooks {unknown}; known: {sorted(chosen)}")
        chosen = {name: chosen[name] for name in args.only}
    results = json.loads(args.out.read_text())["notebooks"] if args.out.is_file() else {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in chosen.items():
            results[name] = time_notebook(path, Path(scratch))
            print(f"{name:14s} {results[name]}", flush=True)
    import torch

    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
               "torch": torch.__version__, "note": "the book's 2-core machine, shared with other jobs"}
    args.out.write_text(json.dumps({"machine": machine, "notebooks": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
