"""The book's assignments, with nbgrader: generate the student versions, let a student check
a notebook, grade a folder of submissions into a CSV of points per test.

    python assignments/classroom.py generate [ASSIGNMENT ...]
    python assignments/classroom.py check NOTEBOOK [--time-limit SECONDS]
    python assignments/classroom.py grade SUBMISSIONS [--out FOLDER] [--time-limit SECONDS]

(`make assignments`, `make check NB=...` and `make grade SUBMISSIONS=...` run these.)

``assignments/`` is an nbgrader course folder: one source notebook per assignment in
``source/<id>/<id>.ipynb`` holds the solutions between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` and the tests, hidden ones between ``### BEGIN HIDDEN TESTS`` and
``### END HIDDEN TESTS``; nbgrader's cell metadata marks answer and test cells.
``generate`` runs nbgrader's ``generate_assignment``, which writes the student versions to
``release/<id>/`` (solutions replaced by ``raise NotImplementedError()`` stubs, hidden
tests removed) and the gradebook ``gradebook.db``.

``check`` runs a student's notebook with nbgrader's :class:`~nbgrader.validator.Validator`
(the visible tests only) and, unlike ``nbgrader validate`` (nbgrader issue #1908), exits
with status 1 when a test fails.

``grade`` grades every notebook under ``SUBMISSIONS/<student>/`` whose name is that of an
assignment (``a1_elbo.ipynb`` ...) with nbgrader's ``autograde`` in a scratch course
folder: the test cells are restored from the source, hidden tests included, and each
notebook runs on a fresh kernel within a time limit for the whole notebook. It writes
``grades.csv`` (one row per student, assignment and test), ``report.txt`` (one line per
submission, and one for every problem: a file that is not a notebook, a notebook that
ran out of time, an exception in a test) and the graded notebooks, with their outputs,
under ``autograded/``. A bad submission never stops the grading of the others.

nbgrader runs the students' code as the user who grades, with no sandbox: grade on a
machine or account that holds nothing a student's notebook should not touch.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

COURSE = Path(__file__).resolve().parent
"""The nbgrader course folder: ``nbgrader_config.py``, ``source/``, ``release/``."""
DEFAULT_TIME_LIMIT = 300
"""Seconds for a whole notebook. Every assignment runs in under 3 minutes on 2 CPU cores."""
STUDENT_ERRORS = ("AssertionError", "NotImplementedError")
"""What a test cell raises when a student's answer is wrong or missing."""
CSV_FIELDS = ("student", "assignment", "test", "points", "max_points", "result", "detail")


class ClassroomError(RuntimeError):
    """A command that cannot run as asked: say what was wrong and what to do."""


# ------------------------------------------------------------------------------ nbgrader


def _quiet_logging() -> None:
    """nbgrader and nbclient log every step at INFO, and nbgrader's gradebook warns about
    SQLAlchemy sessions; the commands print their own summary instead."""
    import warnings

    warnings.filterwarnings("ignore", module="nbgrader")
    for name in ("traitlets", "nbgrader", "NbGraderAPI", "nbclient", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _notebook_time_limit_class():
    """nbgrader's Execute preprocessor with one time limit for a whole notebook.

    nbgrader (through nbclient) limits each cell; here every cell may run for what is left
    of the notebook's limit, at least a second. A cell still running then is interrupted,
    gets a ``CellTimeoutError`` output, and the notebook goes on, so the tests after an
    endless loop still run and report.
    """
    from nbgrader.preprocessors import Execute
    from traitlets import Integer

    class NotebookTimeLimit(Execute):
        time_limit = Integer(DEFAULT_TIME_LIMIT, help="Seconds for the whole notebook.").tag(
            config=True
        )

        def preprocess(self, nb, resources=None, km=None):
            deadline = time.monotonic() + self.time_limit
            self.timeout_func = lambda cell: max(1, math.ceil(deadline - time.monotonic()))
            return super().preprocess(nb, resources, km)

    return NotebookTimeLimit


def course_config(root: Path, time_limit: int = DEFAULT_TIME_LIMIT):
    """nbgrader's configuration for the course folder ``root``: ``nbgrader_config.py`` of
    the book, the folder as the course root, and the notebook time limit."""
    from nbgrader.converters.autograde import Autograde
    from nbgrader.preprocessors import Execute
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(COURSE)).load_config()
    config.CourseDirectory.root = str(root)
    # ipykernel warns on every start that its local TCP sockets are not encrypted
    config.Execute.extra_arguments = ["--IPKernelApp.log_level=ERROR"]
    limited = _notebook_time_limit_class()
    config.NotebookTimeLimit.time_limit = int(time_limit)
    config.Autograde.autograde_preprocessors = [
        limited if step is Execute else step
        for step in Autograde.class_traits()["autograde_preprocessors"].default()
    ]
    return config


def _one_thread_kernels() -> None:
    """Run the notebooks' PyTorch on one thread (unless OMP_NUM_THREADS says otherwise).

    On a machine busy with other work, two threads that wait for each other slow a
    notebook down many times over: on the book's shared 2-core machine A2 took more than
    15 minutes with two threads and about 3 with one. One thread also makes the results
    independent of the number of cores."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _use_this_python() -> None:
    """Put this Python's ``bin`` first on PATH: nbgrader's gradebook runs the ``alembic``
    command, and kernels start from there, also when the virtual environment is not
    activated (``.venv/bin/python assignments/classroom.py ...``)."""
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _api(root: Path, time_limit: int = DEFAULT_TIME_LIMIT):
    from nbgrader.apps import NbGraderAPI

    _use_this_python()
    _one_thread_kernels()
    _quiet_logging()
    return NbGraderAPI(config=course_config(root, time_limit))


# ----------------------------------------------------------------------------- generate


def assignment_ids(root: Path = COURSE) -> list[str]:
    """The assignments of a course folder: ``source/<id>/<id>.ipynb``, sorted."""
    return sorted(p.parent.name for p in (root / "source").glob("*/*.ipynb") if p.stem == p.parent.name)


def generate(ids: Sequence[str] | None = None, root: Path = COURSE) -> list[Path]:
    """Write the student version of each assignment to ``root/release/<id>/<id>.ipynb``
    with nbgrader's ``generate_assignment``; returns their paths."""
    known = assignment_ids(root)
    ids = list(ids) if ids else known
    unknown = [a for a in ids if a not in known]
    if unknown:
        raise ClassroomError(f"no assignment {unknown} in {root / 'source'}; known: {known}")
    api = _api(root)
    paths = []
    for assignment in ids:
        result = api.generate_assignment(assignment, force=True, create=True)
        if not result["success"]:
            details = result.get("log", "") + result.get("error", "")
            raise ClassroomError(f"nbgrader could not generate {assignment}:\n{details}")
        paths.append(root / "release" / assignment / f"{assignment}.ipynb")
    return paths


# ---------------------------------------------------------------------------- notebooks


def read_notebook(path: Path):
    """The notebook at ``path``, or a :class:`ClassroomError` that says what is wrong with
    the file (missing, not JSON, not a notebook)."""
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise ClassroomError(f"{path}: no such file")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except nbformat.reader.NotJSONError as error:
        first = str(error).splitlines()[0][:120] if str(error) else "empty file"
        raise ClassroomError(f"{path.name} is not a Jupyter notebook: not valid JSON ({first})") from None
    except (nbformat.ValidationError, UnicodeDecodeError, KeyError, ValueError, TypeError) as error:
        first = str(error).splitlines()[0][:120]
        raise ClassroomError(f"{path.name} is not a valid Jupyter notebook ({first})") from None
    return nb


def test_cells(nb) -> list[dict]:
    """The graded test cells of a notebook, in order: grade_id, points, first line."""
    cells = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and cell.cell_type == "code":
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            title = first.lstrip("# ").strip()
            points = float(meta.get("points", 0))
            cells.append({"id": meta["grade_id"], "points": points, "title": title, "source": cell.source})
    return cells


def cell_error(cell) -> tuple[str, str] | None:
    """``(error name, first line of its message)`` of a code cell's first error output."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            value = (output.get("evalue") or "").strip().splitlines()
            return output.get("ename", "Error"), (value[0][:160] if value else "")
    return None


def describe_error(error: tuple[str, str] | None) -> str:
    if error is None:
        return ""
    name, message = error
    if name in ("CellTimeoutError", "TimeoutError"):
        return "stopped at the notebook's time limit (an endless loop, or far too slow)"
    if name == "KeyboardInterrupt":
        return "interrupted at the notebook's time limit"
    return f"{name}: {message}" if message else name


# -------------------------------------------------------------------------------- check


def check(notebook: Path, time_limit: int = DEFAULT_TIME_LIMIT, out=sys.stdout) -> bool:
    """Run a student's notebook on a fresh kernel and its visible tests with nbgrader's
    Validator; print one line per test cell and return whether all passed."""
    from nbgrader.preprocessors import CheckCellMetadata, ClearOutput
    from nbgrader.utils import compute_checksum
    from nbgrader.validator import Validator

    notebook = Path(notebook).resolve()
    nb = read_notebook(notebook)
    tests = test_cells(nb)
    if not tests:
        raise ClassroomError(f"{notebook.name} has no test cells: is it one of the book's assignments?")
    _use_this_python()
    _one_thread_kernels()
    _quiet_logging()
    config = course_config(COURSE, time_limit)
    limited = _notebook_time_limit_class()
    config.Validator.preprocessors = [CheckCellMetadata, ClearOutput, limited]
    # Report failures even when a read-only cell was edited (the Validator would report only
    # the edit); the edit is reported here instead.
    config.Validator.ignore_checksums = True
    edited = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("locked")
              and "checksum" in c.metadata.nbgrader and compute_checksum(c) != c.metadata.nbgrader.checksum]
    if edited:
        print(f"Note: {len(edited)} read-only or test cell(s) were edited. Grading restores them from the "
              "source, so the results here may differ from your grade.", file=out)
    print(f"Running {notebook.name} on a fresh kernel (at most {time_limit} s)...", file=out, flush=True)
    start = time.perf_counter()
    results = Validator(config=config).validate(str(notebook))
    seconds = time.perf_counter() - start
    if "type_changed" in results:
        print("Some cells changed type (code <-> markdown); change them back and check again.", file=out)
        return False
    # the Validator reports failed cells by their source; match them to the test cells
    failed = {cell["source"].strip(): cell["raw_error"] for cell in results.get("failed", [])}
    n_failed = 0
    for test in tests:
        error = failed.get(test["source"].strip())
        if error is None:
            print(f"  passed  {test['title']}", file=out)
        else:
            n_failed += 1
            print(f"  FAILED  {test['title']}: {_last_error_line(error)}", file=out)
    verdict = "all visible tests pass" if n_failed == 0 else f"{n_failed} of {len(tests)} test cells failed"
    print(f"{notebook.name}: {verdict} ({seconds:.0f} s). Grading also runs hidden tests.", file=out)
    return n_failed == 0


def _last_error_line(traceback_text: str) -> str:
    """The exception line of a traceback as nbgrader reports it (colours removed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", traceback_text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line):
            line = line.rstrip(":").strip()
            if line == "NotImplementedError":
                return "NotImplementedError (a function you have not written yet)"
            return line[:160]
    return lines[-1][:160] if lines else "failed"


# -------------------------------------------------------------------------------- grade


@dataclasses.dataclass
class Submission:
    student: str
    assignment: str
    path: Path
    problem: str = ""  # why it could not be graded; empty when it was
    seconds: float = 0.0


def find_submissions(folder: Path, ids: Iterable[str]) -> tuple[list[Submission], list[str]]:
    """``folder/<student>/**/<assignment>.ipynb`` for every student folder; and a line for
    every file that does not fit that layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClassroomError(
            f"{folder}: no such folder. Put each student's notebooks in {folder}/<student>/, "
            f"e.g. {folder}/ada/a1_elbo.ipynb"
        )
    ids = set(ids)
    found, problems = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_dir():
            problems.append(f"{path.name}: not in a student folder; put it in {folder.name}/<student>/")
            continue
        student = path.name
        if not re.fullmatch(r"[\w.@+-]+", student):
            problems.append(f"{student}/: a student folder name may hold letters, digits and . @ + - _ only")
            continue
        by_assignment: dict[str, list[Path]] = {}
        for notebook in sorted(path.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in notebook.parts:
                continue
            if notebook.stem in ids:
                by_assignment.setdefault(notebook.stem, []).append(notebook)
            else:
                expected = ", ".join(f"{a}.ipynb" for a in sorted(ids))
                problems.append(f"{student}/{notebook.relative_to(path)}: not an assignment name "
                                f"(expected one of {expected}); not graded")
        for assignment, paths in sorted(by_assignment.items()):
            if len(paths) > 1:
                names = ", ".join(str(p.relative_to(path)) for p in paths)
                problems.append(f"{student}/{assignment}: {len(paths)} notebooks ({names}); graded none")
                found.append(Submission(student, assignment, paths[0], "more than one notebook"))
            else:
                found.append(Submission(student, assignment, paths[0]))
    return found, problems


def grade(submissions: Path, out: Path, time_limit: int = DEFAULT_TIME_LIMIT, printer=print) -> list[dict]:
    """Grade every submission under ``submissions`` (see the module docstring); write
    ``out/grades.csv``, ``out/report.txt`` and ``out/autograded/``; return the CSV rows."""
    from nbgrader.api import Gradebook, MissingEntry

    ids = assignment_ids(COURSE)
    found, problems = find_submissions(Path(submissions), ids)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    report: list[str] = [f"{p}" for p in problems]
    with tempfile.TemporaryDirectory(prefix="vae-book-grading-") as scratch:
        root = Path(scratch)
        shutil.copytree(COURSE / "source", root / "source")
        api = _api(root, time_limit)
        sources = {}
        for assignment in sorted({s.assignment for s in found}):
            result = api.generate_assignment(assignment, force=True, create=True)
            if not result["success"]:
                raise ClassroomError(f"nbgrader could not prepare {assignment}: {result.get('error', '')}")
            sources[assignment] = test_cells(read_notebook(root / "source" / assignment / f"{assignment}.ipynb"))
        for i, sub in enumerate(found):
            tests = sources[sub.assignment]
            label = f"{sub.student} {sub.assignment}"
            if not sub.problem:
                try:
                    read_notebook(sub.path)
                except ClassroomError as error:
                    sub.problem = str(error)
            if sub.problem:
                report.append(f"{label}: NOT GRADED, 0 points: {sub.problem}")
                rows += [_row(sub, t, 0.0, "not graded", sub.problem) for t in tests]
                printer(f"[{i + 1}/{len(found)}] {label}: not graded ({sub.problem})")
                continue
            target = root / "submitted" / sub.student / sub.assignment / f"{sub.assignment}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sub.path, target)
            printer(f"[{i + 1}/{len(found)}] {label}: running (at most {time_limit} s)...")
            start = time.perf_counter()
            result = api.autograde(sub.assignment, sub.student, force=True, create=True)
            sub.seconds = time.perf_counter() - start
            graded = root / "autograded" / sub.student / sub.assignment / f"{sub.assignment}.ipynb"
            if not result["success"] or not graded.is_file():
                reason = _autograde_failure(result)
                report.append(f"{label}: NOT GRADED, 0 points: {reason}")
                rows += [_row(sub, t, 0.0, "not graded", reason) for t in tests]
                continue
            nb = read_notebook(graded)
            cells = {c.metadata.nbgrader.grade_id: c for c in nb.cells
                     if c.get("metadata", {}).get("nbgrader", {}).get("grade")}
            with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
                try:
                    notebook = gb.find_submission_notebook(sub.assignment, sub.assignment, sub.student)
                    scores = {g.name: g.auto_score for g in notebook.grades}
                except MissingEntry:
                    scores = {}
            sub_rows = []
            for t in tests:
                cell, score = cells.get(t["id"]), scores.get(t["id"])
                if cell is None:
                    sub_rows.append(_row(sub, t, 0.0, "missing", "the test cell was deleted"))
                    continue
                error = cell_error(cell)
                points = float(score or 0.0)
                passed = score is not None and points >= t["points"]
                sub_rows.append(_row(sub, t, points, "passed" if passed else "failed", describe_error(error)))
            rows += sub_rows
            total, maximum = sum(r["points"] for r in sub_rows), sum(r["max_points"] for r in sub_rows)
            report.append(f"{label}: {total:g}/{maximum:g} points ({sub.seconds:.0f} s)")
            for r in sub_rows:
                if r["result"] != "passed":
                    report.append(f"    {r['test']}: {r['result']}{': ' + r['detail'] if r['detail'] else ''}")
            if any("time limit" in r["detail"] for r in sub_rows):
                report.append(f"    the notebook ran out of its {time_limit} s; later cells had 1 s each")
            shutil.copyfile(graded, _mkparent(out / "autograded" / sub.student / graded.name))
    with open(out / "grades.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "report.txt").write_text("\n".join(report) + "\n")
    return rows


def _row(sub: Submission, test: dict, points: float, result: str, detail: str) -> dict:
    return {"student": sub.student, "assignment": sub.assignment, "test": test["id"], "points": points,
            "max_points": test["points"], "result": result, "detail": detail}


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _autograde_failure(result: dict) -> str:
    text = (result.get("error") or "") + "\n" + (result.get("log") or "")
    if "DeadKernelError" in text or "Kernel died" in text:
        return "the kernel died while running it (it used too much memory, or called exit)"
    if "UnresponsiveKernelError" in text:
        return "the kernel stopped responding and could not be interrupted"
    return f"nbgrader could not grade it: {_last_error_line(result.get('error') or 'unknown error')}"


# ---------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python assignments/classroom.py",
        description="Generate, check and grade the book's assignments (nbgrader, offline).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("generate", help="write the student versions to assignments/release/")
    p.add_argument("assignments", nargs="*", help="assignment ids (default: all)")
    p = commands.add_parser("check", help="run a notebook's visible tests (exit status 1 if one fails)")
    p.add_argument("notebook", type=Path)
    p.add_argument("--time-limit", type=int, default=DEFAULT_TIME_LIMIT, metavar="SECONDS")
    p = commands.add_parser("grade", help="grade SUBMISSIONS/<student>/<assignment>.ipynb into a CSV")
    p.add_argument("submissions", type=Path)
    p.add_argument("--out", type=Path, default=Path("graded"), help="output folder (default: graded)")
    p.add_argument("--time-limit", type=int, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                   help=f"seconds for each notebook (default: {DEFAULT_TIME_LIMIT})")
    args = parser.parse_args(argv)
    if getattr(args, "time_limit", 1) < 1:
        parser.error("--time-limit must be at least 1 second")
    try:
        if args.command == "generate":
            for path in generate(args.assignments):
                print(f"wrote {path.relative_to(COURSE.parent)}")
            return 0
        if args.command == "check":
            return 0 if check(args.notebook, args.time_limit) else 1
        rows = grade(args.submissions, args.out, args.time_limit, printer=lambda s: print(s, flush=True))
        print((args.out / "report.txt").read_text(), end="")
        print(f"wrote {args.out / 'grades.csv'} ({len(rows)} rows), {args.out / 'report.txt'} "
              f"and the graded notebooks in {args.out / 'autograded'}/")
        return 0
    except ClassroomError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
