"""Print the whole book to one PDF, offline, with the system Chromium.

    python tools/book_pdf.py        # after `jupyter-book build . --builder singlehtml` (make pdf does both)

It opens the single-page build (``_build/singlehtml``), waits until MathJax has typeset every formula,
and prints the page with Chromium's own PDF printer (the theme's print style: no sidebars, no buttons) to
``_build/pdf/book.pdf``. Nothing is downloaded: MathJax and the fonts ship in the build, and the browser is
Debian's ``chromium`` driven by Playwright (the same launch as tools/check_site.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_site import launch, local_request, redirect_target, wait_for_mathjax  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "_build" / "singlehtml")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf" / "book.pdf")
    args = parser.parse_args(argv)

    index = args.site / "index.html"
    if not index.is_file():
        raise SystemExit(f"book_pdf: no single-page build at {args.site}; run `make pdf`.")
    page_path = index
    if (target := redirect_target(index.read_text(encoding="utf-8"))) is not None:
        # Jupyter Book writes the single page under its root document's name (book/intro.html), but its
        # links to _static/ and _images/ are relative to the build's root: read it from there.
        page_path = args.site / "whole-book.html"
        page_path.write_text((args.site / target).read_text(encoding="utf-8"), encoding="utf-8")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    start = time.time()
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        remote = []

        def route(r):
            if local_request(r.request.url):
                r.continue_()
            else:
                remote.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(page_path.resolve().as_uri(), timeout=120_000)
        wait_for_mathjax(page)
        left = page.evaluate("() => [...document.querySelectorAll('span.math, div.math')]"
                             ".filter(e => !e.querySelector('mjx-container')).length")
        page.emulate_media(media="print")
        page.pdf(path=str(args.out), format="A4", print_background=False,
                 margin={"top": "18mm", "bottom": "18mm", "left": "16mm", "right": "16mm"},
                 display_header_footer=True, header_template="<span></span>",
                 footer_template='<div style="font-size:8px;width:100%;text-align:center;">'
                                 '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')
        browser.close()
    if left:
        raise SystemExit(f"book_pdf: {left} formulas were not typeset; the PDF would show raw TeX.")
    if remote:
        raise SystemExit(f"book_pdf: the book requested other hosts: {sorted(set(remote))[:3]}")
    size = args.out.stat().st_size
    print(f"{args.out} written: {size / 1e6:.1f} MB in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
