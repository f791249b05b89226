"""Every number a chapter's prose states is backed by its outputs, its code settings or a results file it
names (tests/check_prose_numbers.py, whose docstring gives the rules); and the rules themselves."""

import json
from pathlib import Path

import pytest

import check_prose_numbers as check

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_number_in_the_prose_is_backed(notebook):
    report = check.check_path(notebook, ROOT)
    assert report.ok, check.describe(report)


def claimed(markdown):
    return [c.text for c in check.claims_in_markdown(markdown)]


def notebook(markdown, outputs=(), code="", caption=""):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": markdown}]
    cell = {"cell_type": "code", "metadata": {}, "source": code, "execution_count": 1, "outputs": []}
    for text in outputs:
        cell["outputs"].append({"output_type": "stream", "name": "stdout", "text": text})
    if caption:
        cell["metadata"]["mystnb"] = {"figure": {"caption": caption}}
    return {"cells": cells + [cell]}


def unmatched(markdown, outputs=(), code="", root=ROOT, allowed=(), caption=""):
    report = check.check_notebook(notebook(markdown, outputs, code, caption), "t.ipynb", root, list(allowed))
    return [c.text for c in report.unmatched]


def test_plain_numbers_are_claims_with_their_precision():
    claims = check.claims_in_markdown("The test -ELBO is 87.98 nats on 10,000 images, 4.0% of them 1s.")
    assert [(c.text, c.value, c.decimals, c.percent) for c in claims] == [
        ("87.98", 87.98, 2, False), ("10,000", 10000.0, 0, False), ("4.0%", 4.0, 1, True)
    ]  # fmt: skip
    assert "87.98 nats" in claims[0].sentence


def test_references_headings_labels_and_enumerators_are_not_claims():
    markdown = """(sec-elbo-iwae)=
## 3.6 The importance-weighted bound

As [Section 3.5](sec-elbo-ppca) and Sections 3.7 and 3.8 show, steps 2 and 3 of Chapter 12 add
Theorem 1 (2) of {cite}`burda2016importance`; see Figure 14 and Table 11.
1. A first point.
**2. A second point.**
"""
    assert claimed(markdown) == []


def test_code_spans_fences_and_roles_are_not_claims_but_directive_bodies_are():
    markdown = """Run `n = 20_000` and {cite}`kingma2014auto`, then {numref}`ex-data-12`.
```python
print(12345)
```
```{exercise} A title with 42 in it
:label: ex-x-99
Draw 200 samples.
```
::::{solution} ex-x-99
:class: dropdown
About 31 of them.
::::
"""
    assert claimed(markdown) == ["42", "200", "31"]


def test_identifiers_versions_years_and_single_digits_are_not_claims():
    markdown = ("In float32 a conv2 unit of IWAE-1000 sees 28x28 pixels for the 1st time (SHA-256, torch 2.14.1, "
                "Kingma and Welling, 2014), with 2 layers and 8 bits; it is 5x faster and 4% larger.")  # fmt: skip
    assert claimed(markdown) == ["5", "4%"]


def test_in_math_only_results_are_claims():
    markdown = (r"Here $d = 32$ and $W \in \R^{784 \times 32}$, $\sigma = 0.3$; the error is "
                r"$25/\sqrt{10\,000} = 0.25$ and $\sqrt{10\,000 \cdot 0.1 \cdot 0.9} \approx 30$, "
                r"which is $16/400 = 4\%$. $$ \log p(x) = \mathcal L + 1.5 $$")  # fmt: skip
    assert claimed(markdown) == ["0.25", "30", "4%"]


def test_a_claim_is_backed_by_a_value_that_rounds_to_it():
    assert unmatched("It is 87.98 nats.", ["-ELBO 87.983\n"]) == []
    assert unmatched("It is 87.98 nats.", ["-ELBO 87.986\n"]) == ["87.98"]
    assert unmatched("About 25 nats.", ["std 25.4\n"]) == []
    assert unmatched("About 25 nats.", ["std 25.6\n"]) == ["25"]
    assert unmatched("It fell 5.23 nats.", ["delta -5.231\n"]) == []  # signs are ignored


def test_thousands_percentages_and_factors_match_their_outputs():
    assert unmatched("We use 1,500 images.", ["n = 1500\n"]) == []
    assert unmatched("We use 1500 images.", ["n = 1,500\n"]) == []
    assert unmatched("It is 4% of the pixels.", ["share 0.0401\n"]) == []
    assert unmatched("It is 4% of the pixels.", ["share 4.0%\n"]) == []
    assert unmatched("It is 4% of the pixels.", ["share 0.046\n"]) == ["4%"]
    assert unmatched("It is 12x faster.", ["(12x faster)\n"]) == []


def test_code_literals_back_claims_but_comments_and_strings_do_not():
    assert unmatched("We draw 20,000 samples.", code="n = 20_000\n") == []
    assert unmatched("We draw 20,000 samples.", code="n = 5  # 20000\n") == ["20,000"]
    assert unmatched("We draw 20,000 samples.", code="label = 'n=20000'\n") == ["20,000"]


def test_captions_are_prose_too():
    assert unmatched("A figure.", caption="The first images of 70,000.") == ["70,000"]


def test_results_files_back_claims_only_when_the_chapter_names_them(tmp_path):
    (tmp_path / "checkpoints" / "my_run").mkdir(parents=True)
    (tmp_path / "checkpoints" / "my_run" / "metrics.json").write_text(json.dumps({"nelbo": 87.9779}))
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "speed.json").write_text(json.dumps({"images_per_s": [412.2]}))
    assert unmatched("The model gets 87.98 nats.", root=tmp_path) == ["87.98"]
    assert unmatched("The model `my_run` gets 87.98 nats.", root=tmp_path) == []
    assert unmatched("It codes 412 images/s.", root=tmp_path) == ["412"]
    assert unmatched("`benchmarks/speed.py` codes 412 images/s.", root=tmp_path) == []
    assert unmatched("It codes 412 images/s.", code="load('benchmarks/results/speed.json')", root=tmp_path) == []


def test_allow_list_entries_back_claims_near_their_words_and_stale_ones_are_reported():
    entry = check.Allowed("11", "the size of data/mnist.npz in MB", near="mnist.npz")
    report = check.check_notebook(notebook("The file `mnist.npz` is 11 MB."), "t", ROOT, [entry])
    assert report.ok and entry.used
    entry = check.Allowed("11", "the size of data/mnist.npz in MB", near="mnist.npz")
    report = check.check_notebook(notebook("There are 11 classes."), "t", ROOT, [entry])
    assert [c.text for c in report.unmatched] == ["11"] and report.stale == [entry]
    assert "no longer needed" in check.describe(report)


def test_allow_list_entries_need_a_reason(tmp_path):
    path = tmp_path / "01_x.toml"
    path.write_text('[[allow]]\nnumber = "11"\nreason = "the file size in MB"\n')
    assert [a.number for a in check.load_allow_list(path)] == ["11"]
    path.write_text('[[allow]]\nnumber = "11"\n')
    with pytest.raises(ValueError, match="'reason'"):
        check.load_allow_list(path)


def test_cli_prints_each_unbacked_number_with_its_sentence(tmp_path, capsys):
    (tmp_path / "notebooks").mkdir()
    bad = tmp_path / "notebooks" / "01_x.ipynb"
    bad.write_text(json.dumps(notebook("The spread is roughly 25 nats. Fine.", ["mean 87.98\n"])))
    assert check.main(["--root", str(tmp_path), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "1 of 1 numbers" in out and "25  in: The spread is roughly 25 nats." in out
    bad.write_text(json.dumps(notebook("The spread is roughly 25 nats.", ["std 24.8\n"])))
    assert check.main(["--root", str(tmp_path)]) == 0
    assert "all 1 numbers in the prose are backed" in capsys.readouterr().out
