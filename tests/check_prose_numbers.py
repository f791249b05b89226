"""Every number a chapter states in words must be backed by something the chapter computes.

    python tests/check_prose_numbers.py [NOTEBOOK ...]     (no argument: every notebooks/*.ipynb)
    python tests/check_prose_numbers.py --show-backing notebooks/01_data.ipynb

For each chapter it prints every number quoted in the prose that nothing backs, with its sentence, and
allow-list entries that are no longer needed; the exit status is 1 if there are any. Standard library only,
so it runs with any Python >= 3.11. ``tests/test_prose_numbers.py`` runs it on every chapter under
``make test``.

What the check reads as a claim: every number in the markdown cells and in the figure captions and alt
texts (cell metadata ``mystnb``), except these, which are not claims about a result:

1. code: inline code spans and fenced code blocks; MyST roles (``{cite}`...```, ``{ref}`...```) are code
   spans too, so citation keys and labels never count;
2. structure: heading numbers (``## 3.6 ...``), label lines ``(sec-x)=``, directive fences and their option
   lines (``:label: ...``), list enumerators (``1.`` at the start of a line, ``(1)``), link targets, and
   numbers after Section, Chapter, Theorem, Proposition, Figure, Table, Equation, Exercise, Step, Appendix
   or Part (with continuations such as "Sections 3.5 and 3.6", "steps 2 and 3");
3. identifiers: digits glued to letters (``float32``, ``conv2``, ``SHA-256``, ``28x28``, ``1st``) and
   dotted version numbers (``2.14.1``);
4. years: integers from 1900 to 2039 written without a thousands separator;
5. math (``$...$``, ``$$...$$``): integers there are definitions (dimensions, exponents, indices), so only
   decimals, percentages (``4\\%``) and numbers right after ``\\approx``/``\\simeq`` are claims;
6. single-digit integers (0 to 9) are the setting's counts and constants (1 bit, 8-bit, 2 layers), unless
   written as a percentage (``4%``) or a factor (``5x``, ``5×``).

What backs a claim (its "backing numbers"):

- every number printed in the chapter's outputs (text, Markdown and HTML), with thousands separators
  (``1,700,609``) and exponents (``1.56e+03``) read;
- the numeric literals of the chapter's code cells (settings such as ``n = 20_000``), not comments or
  strings;
- every number in the shipped results files the chapter names, in its prose or its code: a path under
  ``benchmarks/results/`` or ``checkpoints/``, a file name found in ``benchmarks/results/``, a checkpoint
  folder by its name (``conv_binarized``: all its text files), or a benchmark script
  (``benchmarks/architecture.py``: ``benchmarks/results/architecture*``);
- the chapter's allow-list, ``tests/prose_numbers/<chapter>.toml``: constants the prose may state without a
  cell printing them, each with its reason, optionally only in a sentence containing ``near``::

      [[allow]]
      number = "11"
      near = "mnist.npz"
      reason = "the file's size in MB, from `ls -l data/mnist.npz`"

Matching: a prose number written with k decimals is backed by a value that rounds to it at k decimals
("87.98" by 87.983, "25" by 25.4); signs are ignored (prose says "5.2 nats below"); a percentage p% is
backed by p or by p/100 ("4%" by 4.0% or by 0.04); a factor "5x" by 5.

What it cannot see: numbers written as words ("ten times more"), and whether a backed number is the right
one for its sentence. It makes sure a number comes from somewhere; reading the sentence is still a person's
job.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import io
import json
import math
import re
import sys
import tokenize
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOW_DIR = Path("tests") / "prose_numbers"

RESULT_SUFFIXES = {".json", ".csv", ".txt", ".md"}
REFERENCE_WORDS = (
    r"sections?|chapters?|ch\.|sec\.|§|theorems?|propositions?|lemmas?|corollar(?:y|ies)|definitions?|"
    r"figures?|figs?\.|tables?|equations?|eqs?\.|exercises?|steps?|appendix|appendices|parts?"
)
REFERENCE = re.compile(
    rf"\b(?:{REFERENCE_WORDS})\s*\(?\d+(?:\.\d+)*\)?(?:\s*(?:,|and|or|to|–|—|-)\s*\(?\d+(?:\.\d+)*\)?)*",
    re.IGNORECASE,
)
NUMBER = re.compile(r"\d{1,3}(?:(?:,|\\,|\{,\})\d{3})+(?:\.\d+)?|\d+(?:\.\d+)*(?:[eE][-+]?\d+)?")
THOUSANDS = re.compile(r",|\\,|\{,\}")  # 1,500 in prose; 10\,000 and 10{,}000 in math
OUTPUT_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?%?")


@dataclasses.dataclass
class Claim:
    """A number stated in the prose."""

    text: str  # as written, e.g. "1,500" or "4%"
    value: float
    decimals: int
    percent: bool
    sentence: str
    where: str = ""  # e.g. "cell 6" or "caption of cell 10"


@dataclasses.dataclass
class Allowed:
    number: str
    reason: str
    near: str = ""
    used: bool = False


@dataclasses.dataclass
class Report:
    notebook: str
    claims: list[Claim]
    unmatched: list[Claim]
    stale: list[Allowed]
    results_files: list[str]

    @property
    def ok(self) -> bool:
        return not self.unmatched and not self.stale


# ---------------------------------------------------------------------------------------------------------
# Claims: the numbers of the prose


def _blank(text: str, start: int, end: int) -> str:
    """``text`` with ``[start, end)`` replaced by spaces (newlines kept), so positions stay the same."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def _mask(text: str, pattern: str, flags: int = 0, group: int = 0) -> str:
    for match in reversed(list(re.finditer(pattern, text, flags))):
        text = _blank(text, match.start(group), match.end(group))
    return text


def _mask_code(text: str) -> str:
    """Blank fenced code blocks (not directive fences, whose content is prose) and inline code spans."""
    out, code_fence, directives = [], None, []  # directives: the open ```{name} fences, innermost last
    for line in text.split("\n"):
        fence = re.match(r"(`{3,}|~{3,})(.*)", line.lstrip())
        if code_fence is not None:
            if fence and fence.group(1)[0] == code_fence[0] and len(fence.group(1)) >= len(code_fence):
                code_fence = None if not fence.group(2).strip() else code_fence
            out.append(" " * len(line))
        elif fence and fence.group(2).strip().startswith("{"):  # ```{exercise} Title: keep the title
            directives.append(fence.group(1))
            out.append(re.sub(r"^\s*[`~]+\{[^}]*\}", lambda m: " " * len(m.group()), line))
        elif fence and not fence.group(2).strip() and directives and directives[-1] == fence.group(1):
            directives.pop()
            out.append(" " * len(line))
        elif fence:
            code_fence = fence.group(1)
            out.append(" " * len(line))
        else:
            out.append(line)
    text = "\n".join(out)
    # inline code: a run of n backticks up to the next run of exactly n backticks
    return _mask(text, r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)


def _math_spans(text: str) -> list[tuple[int, int]]:
    spans = [(m.start(), m.end()) for m in re.finditer(r"\$\$.+?\$\$", text, re.DOTALL)]
    outside = text
    for start, end in spans:
        outside = _blank(outside, start, end)
    spans += [(m.start(), m.end()) for m in re.finditer(r"(?<![\\$])\$(?!\$)(?:[^$\n]|\n(?!\n))+?(?<!\\)\$", outside)]
    return sorted(spans)


def _sentence(original: str, position: int) -> str:
    starts = [m.end() for m in re.finditer(r"[.!?:]\s+(?=[A-Z(*$`\[])|\n\s*\n", original[:position])]
    start = starts[-1] if starts else 0
    end_match = re.compile(r"[.!?](?=\s+[A-Z(*$`\[]|\s*$)|\n\s*\n").search(original, position)
    end = end_match.end() if end_match else len(original)
    sentence = " ".join(original[start:end].split())
    return sentence if len(sentence) <= 240 else sentence[:237] + "..."


RELATION = re.compile(r"=|\\approx|\\simeq")


def _math_result(text: str, math: list[tuple[int, int]], math_starts: list[int], position: int) -> bool:
    """Whether a number in a math span is a result: after the span's last relation, if that is an
    approximation (``\\approx 27``) or an equation whose left side computes with numbers
    (``25/\\sqrt{10\\,000} = 0.25``), not a definition (``d = 32``)."""
    start, end = math[bisect.bisect_right(math_starts, position) - 1]
    relations = list(RELATION.finditer(text, start, end))
    if not relations or relations[-1].end() > position:
        return False
    last = relations[-1]
    if last.group() != "=":
        return True
    left_start = relations[-2].end() if len(relations) > 1 else start
    return bool(re.search(r"\d", text[left_start : last.start()]))


def claims_in_markdown(markdown: str, where: str = "") -> list[Claim]:
    """The numbers ``markdown`` states as claims, by the rules in this module's docstring."""
    display = _mask(markdown, r"^\s*:[\w-]+:.*$|^\s*(?:`{3,}|:{3,})(?:\{[^}]*\}.*)?$", re.M)  # for sentences
    text = _mask_code(markdown)
    text = _mask(text, r"<!--.*?-->", re.DOTALL)
    text = _mask(text, r"<[^>\n]+>")
    text = _mask(text, r"^\s*\([\w:-]+\)=\s*$", re.M)  # (label)=
    text = _mask(text, r"^\s*(?:`{3,}|:{3,})\{[^}]*\}", re.M)  # directive fences ```{exercise} Title
    text = _mask(text, r"^\s*(?:`{3,}|:{3,})\s*$", re.M)
    text = _mask(text, r"^\s*:[\w-]+:.*$", re.M)  # directive options
    text = _mask(text, r"^\s*#+\s+[\d.]+", re.M)  # heading numbers
    text = _mask(text, r"^\s*(?:[-*+]\s+)?(?:\*\*|__)?\d+[.)](?=\s)", re.M)  # list enumerators
    text = _mask(text, r"\(\d\)")  # (1), (2): enumerators and equation numbers
    text = _mask(text, r"\]\(([^)\s]*)\)", group=1)  # link targets
    text = _mask(text, REFERENCE.pattern, re.IGNORECASE)
    math = _math_spans(text)
    math_starts = [start for start, _ in math]

    def in_math(position: int) -> bool:
        index = bisect.bisect_right(math_starts, position) - 1
        return index >= 0 and position < math[index][1]

    claims = []
    for match in NUMBER.finditer(text):
        written, start, end = match.group(), match.start(), match.end()
        before = text[start - 1] if start else " "
        before2 = text[max(0, start - 2) : start]
        after = text[end] if end < len(text) else " "
        after2 = text[end + 1] if end + 1 < len(text) else " "
        if before.isalnum() or before in "_." or re.fullmatch(r"[A-Za-z]-", before2):
            continue  # glued to a word or a number: conv2, SHA-256, .5 handled by the writer
        if written.count(".") > 1:
            continue  # a version number
        percent = after == "%" or text[end : end + 2] == r"\%"
        factor = after in "x×" and not (after2.isalnum() or after2 == "_")
        if (after.isalnum() or after == "_") and not factor:
            continue  # float32-like identifiers, 28x28, 1st, 2e (handled by the exponent in NUMBER)
        written = THOUSANDS.sub(",", written)
        value = float(written.replace(",", ""))
        decimals = len(written.split(".")[1]) if "." in written and "e" not in written.lower() else 0
        is_integer = decimals == 0 and "e" not in written.lower()
        if in_math(start) and not percent and not _math_result(text, math, math_starts, start):
            continue
        if is_integer and not percent and not factor:
            if value < 10:
                continue
            if 1900 <= value < 2040 and "," not in written:
                continue
        sentence = _sentence(display, start)
        claims.append(Claim(written + ("%" if percent else ""), value, decimals, percent, sentence, where))
    return claims


# ---------------------------------------------------------------------------------------------------------
# Backing numbers: outputs, code literals, named results files


def _numbers_in_text(text: str) -> list[float]:
    values = []
    for match in OUTPUT_NUMBER.finditer(text):
        written = match.group()
        percent = written.endswith("%")
        try:
            value = float(written.rstrip("%"))
        except ValueError:
            continue
        values += [value, value / 100] if percent else [value]
    for match in re.finditer(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):  # 1,700,609 -> 1700609
        values.append(float(match.group().replace(",", "")))
    return values


def _numbers_in_json(value) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)] if math.isfinite(value) else []
    if isinstance(value, str):
        return _numbers_in_text(value)
    if isinstance(value, dict):
        return [v for key, item in value.items() for v in _numbers_in_text(str(key)) + _numbers_in_json(item)]
    if isinstance(value, list):
        return [v for item in value for v in _numbers_in_json(item)]
    return []


def _code_literals(source: str) -> list[float]:
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    values = []
    try:
        for token in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
            if token.type == tokenize.NUMBER:
                try:
                    values.append(float(int(token.string, 0)))
                except ValueError:
                    try:
                        values.append(float(token.string.replace("_", "")))
                    except ValueError:
                        pass  # complex literals
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return values


def _cell_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _output_text(output: dict) -> str:
    parts = [output.get("text", "")]
    for kind in ("text/plain", "text/markdown", "text/html", "text/latex"):
        parts.append(output.get("data", {}).get(kind, ""))
    return "\n".join("".join(p) if isinstance(p, list) else p for p in parts)


def named_results_files(chapter_text: str, root: Path) -> list[Path]:
    """The shipped results files a chapter names (see the module docstring), sorted."""
    found: set[Path] = set()

    def add(path: Path) -> None:
        if path.is_file() and path.suffix in RESULT_SUFFIXES:
            found.add(path)
        elif path.is_dir():
            found.update(p for p in path.rglob("*") if p.is_file() and p.suffix in RESULT_SUFFIXES)

    for match in re.finditer(r"(?:benchmarks/results|checkpoints)/[\w./-]*[\w/]", chapter_text):
        add(root / match.group())
    results = root / "benchmarks" / "results"
    if results.is_dir():
        for path in results.iterdir():
            if re.search(rf"(?<![\w/]){re.escape(path.name)}\b", chapter_text):
                add(path)
        for match in re.finditer(r"benchmarks/(\w+)\.py", chapter_text):
            for path in results.glob(f"{match.group(1)}*"):
                add(path)
    checkpoints = root / "checkpoints"
    if checkpoints.is_dir():
        for run in checkpoints.iterdir():
            if run.is_dir() and re.search(rf"\b{re.escape(run.name)}\b", chapter_text):
                add(run)
    return sorted(found)


def backing_numbers(notebook: dict, root: Path) -> tuple[list[float], list[Path]]:
    """Sorted numbers from the notebook's outputs, code literals and the results files it names."""
    values: list[float] = []
    texts = []
    for cell in notebook.get("cells", []):
        texts.append(_cell_text(cell))
        if cell.get("cell_type") != "code":
            continue
        values += _code_literals(_cell_text(cell))
        for output in cell.get("outputs", []):
            values += _numbers_in_text(_output_text(output))
    files = named_results_files("\n".join(texts), root)
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".json":
            try:
                values += _numbers_in_json(json.loads(text))
                continue
            except ValueError:
                pass
        values += _numbers_in_text(text.replace(",", " ")) + _numbers_in_text(text)
    return sorted({abs(v) for v in values}), files


def is_backed(claim: Claim, backing: list[float]) -> bool:
    """Whether a backing value rounds to the claim at the claim's precision (signs ignored)."""
    targets = [abs(claim.value)] + ([abs(claim.value) / 100] if claim.percent else [])
    for target in targets:
        scale = 100 if claim.percent and target != abs(claim.value) else 1
        tolerance = 0.5 * 10.0 ** (-claim.decimals) / scale + 1e-9 * max(1.0, target)
        index = bisect.bisect_left(backing, target - tolerance)
        if index < len(backing) and backing[index] <= target + tolerance:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------
# The check


def load_allow_list(path: Path) -> list[Allowed]:
    """The ``[[allow]]`` entries of a chapter's allow-list; each needs a number and a reason."""
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text()).get("allow", [])
    allowed = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - {"number", "reason", "near"}
        if unknown or not str(entry.get("number", "")).strip() or not str(entry.get("reason", "")).strip():
            raise ValueError(
                f"{path}: entry {i + 1} must have a 'number' and a 'reason' (and optionally 'near'), got {entry}"
            )
        allowed.append(Allowed(str(entry["number"]), entry["reason"], entry.get("near", "")))
    return allowed


def prose_claims(notebook: dict) -> list[Claim]:
    claims = []
    for i, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") == "markdown":
            claims += claims_in_markdown(_cell_text(cell), f"cell {i}")
        mystnb = cell.get("metadata", {}).get("mystnb", {})
        caption = mystnb.get("figure", {}).get("caption", "")
        alt = mystnb.get("image", {}).get("alt", "")
        for name, text in (("caption", caption), ("alt text", alt)):
            if text:
                claims += claims_in_markdown(text, f"{name} of cell {i}")
    return claims


def _allows(entry: Allowed, claim: Claim) -> bool:
    return entry.number.rstrip("%") == claim.text.rstrip("%") and entry.near in claim.sentence


def check_notebook(notebook: dict, name: str, root: Path, allowed: list[Allowed]) -> Report:
    backing, files = backing_numbers(notebook, root)
    claims = prose_claims(notebook)
    unmatched = []
    for claim in claims:
        if is_backed(claim, backing):
            continue
        entry = next((a for a in allowed if _allows(a, claim)), None)
        if entry is not None:
            entry.used = True
        else:
            unmatched.append(claim)
    stale = [a for a in allowed if not a.used]
    return Report(name, claims, unmatched, stale, [str(f.relative_to(root)) for f in files])


def check_path(path: Path, root: Path = ROOT) -> Report:
    notebook = json.loads(Path(path).read_text())
    allowed = load_allow_list(root / ALLOW_DIR / f"{Path(path).stem}.toml")
    try:
        name = str(Path(path).resolve().relative_to(root))
    except ValueError:
        name = str(path)
    return check_notebook(notebook, name, root, allowed)


def describe(report: Report, show_backing: bool = False) -> str:
    lines = []
    if report.ok:
        lines.append(f"{report.notebook}: all {len(report.claims)} numbers in the prose are backed")
    else:
        lines.append(
            f"{report.notebook}: {len(report.unmatched)} of {len(report.claims)} numbers in the prose are not in "
            "an output, a code setting, a named results file or the allow-list"
        )
        for claim in report.unmatched:
            lines.append(f"  {claim.where}: {claim.text}  in: {claim.sentence}")
        for entry in report.stale:
            lines.append(f"  allow-list entry no longer needed: number {entry.number!r} near {entry.near!r}")
    if show_backing:
        lines.append("  results files it names: " + (", ".join(report.results_files) or "none"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: %(default)s)")
    parser.add_argument("--show-backing", action="store_true", help="also list the results files each names")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    paths = args.notebooks or sorted((root / "notebooks").glob("*.ipynb"))
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(map(str, missing))}")
    reports = [check_path(p, root) for p in paths]
    print("\n".join(describe(r, args.show_backing) for r in reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
