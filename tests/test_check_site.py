"""tools/check_site.py finds what it promises to find, on a small site made here.

Each page below breaks one rule (raw TeX, a request to another host, a console error, a code block wider
than its column, a broken link, an image without alt text, a duplicate script, an unfolded solution) and one page breaks none;
the checker must fail exactly the broken ones, for the right reason. Needs Debian's chromium
(`apt-get install -y chromium`; .ci/run installs it).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import check_site  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="needs the system Chromium: apt-get install -y chromium",
)

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{name}</title>{head}</head>
<body><main><article class="bd-article" style="width: 600px">{body}</article></main></body></html>"""

PAGES = {
    "clean": ("", '<p>Plain text with <code>code</code>.</p><pre>short line</pre>'
                  '<a href="other.html#there">a link</a>'),
    "other": ("", '<p id="there">the target</p><img src="x.png" alt="A grid of sixteen digits">'),
    "rawtex": ("", '<p>An inline formula <span class="math notranslate nohighlight">\\(\\log p(x)\\)</span>.</p>'),
    "remote": ('<script src="https://cdn.example.org/lib.js"></script>', "<p>text</p>"),
    "console": ("<script>console.error('broken on purpose')</script>", "<p>text</p>"),
    "wide": ("", '<div class="highlight"><pre style="overflow: auto">' + "x = 1  # " + "y" * 150
                 + "</pre></div>"),
    "brokenlink": ("", '<a href="missing.html">gone</a> <a href="other.html#nowhere">no anchor</a>'),
    "noalt": ("", '<img src="x.png" alt="3f2a9c0d8e7b6a5f4e3d2c1b0a9f8e7d.png">'),
    "unfolded": ("", '<div class="solution"><p>the answer, in plain sight</p></div>'),
    "dupscript": ('<script src="a.js"></script><script src="a.js?v=2"></script>', "<p>text</p>"),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    for name, (head, body) in PAGES.items():
        (site / f"{name}.html").write_text(PAGE.format(name=name, head=head, body=body))
    (site / "a.js").write_text("window.a = 1;")
    (site / "x.png").write_bytes(b"")
    (site / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=clean.html" />')
    from playwright.sync_api import sync_playwright

    pages = check_site.list_pages(site, [])
    with sync_playwright() as p:
        browser = check_site.launch(p)
        context = browser.new_context()
        reports = {r.name: r for r in (check_site.check_page(context, site, n, None) for n in pages)}
        browser.close()
    for name, hrefs in check_site.check_links(site, pages).items():
        reports[name].fail("broken-link", ", ".join(hrefs))
    return reports


@pytest.mark.parametrize(
    "page, check",
    [
        ("rawtex.html", "raw-tex"),
        ("remote.html", "remote-request"),
        ("console.html", "console-error"),
        ("wide.html", "overflow"),
        ("brokenlink.html", "broken-link"),
        ("noalt.html", "img-alt"),
        ("dupscript.html", "duplicate-script"),
        ("unfolded.html", "solution-toggle"),
    ],
)
def test_each_broken_page_fails_its_check(report, page, check):
    assert check in report[page].failures, report[page].notes


def test_clean_pages_pass(report):
    for page in ("clean.html", "other.html", "index.html"):
        assert report[page].failures == [], report[page].notes


def test_details_name_the_problem(report):
    assert any("cdn.example.org" in r for r in report["remote.html"].remote_requests)
    assert report["wide.html"].overflow[0]["longest"] > 150
    assert "broken on purpose" in " ".join(report["console.html"].console_errors)
    notes = " ".join(report["brokenlink.html"].notes)
    assert "missing.html" in notes and "other.html#nowhere" in notes


def test_selecting_pages(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "notebooks").mkdir(exist_ok=True)
        (tmp_path / "notebooks" / f"{name}.html").write_text("<p>x</p>")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "skip.html").write_text("<p>asset</p>")
    assert check_site.list_pages(tmp_path, []) == ["notebooks/a.html", "notebooks/b.html"]
    assert check_site.list_pages(tmp_path, ["notebooks/b"]) == ["notebooks/b.html"]
    assert check_site.list_pages(tmp_path, ["notebooks/b.ipynb"]) == ["notebooks/b.html"]
    assert check_site.list_pages(tmp_path, ["notebooks/*"]) == ["notebooks/a.html", "notebooks/b.html"]
    with pytest.raises(SystemExit, match="no page matches"):
        check_site.list_pages(tmp_path, ["nothing"])
