"""Check the built website in a real headless browser, page by page.

    python tools/check_site.py                      # every page of _build/html
    python tools/check_site.py notebooks/03_elbo    # only the pages named (a name, a path or a glob)

It opens each page from ``file://`` in the system Chromium (driven by Playwright; nothing downloads a
browser) and checks what a reader meets:

- math: every ``\\(..\\)`` / ``\\[..\\]`` typeset by MathJax, no TeX error, no raw TeX left in the text;
- no console error, no duplicate ``<script src>``;
- no request to any host (only the local files, or 127.0.0.1 when served over http);
- at 1280 px, no code or output block wider than its column;
- at 400 px (phone) and 800 px (tablet), the navigation drawer opens; at 1280 px, the ☰ button hides
  the navigation sidebar;
- exercise solutions are folded behind a toggle; images carry real alt text; every internal link resolves (file and anchor); a chapter offers its .ipynb;
- over a local http server and over ``file://``, searching for "bits-back" finds pages.

It prints a report per page, writes screenshots of each chapter at desktop and phone width to
``_build/screenshots/`` and exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import http.server
import json
import os
import shutil
import socketserver
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SITE = ROOT / "_build" / "html"
DEFAULT_SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
TABLET = {"width": 800, "height": 1000}
PHONE = {"width": 400, "height": 850}
SEARCH_TERM = "bits-back"
# Folders of the build that hold assets, not pages.
NOT_PAGES = ("_static/", "_sources/", "_images/", "_downloads/", "_sphinx_design_static/")
LOCAL_SCHEMES = ("file", "data", "blob", "about")

# Runs in the page once MathJax is done: what math is left untypeset, and where.
MATH_JS = r"""
() => {
  const skip = new Set(["PRE", "CODE", "SCRIPT", "STYLE", "TEXTAREA", "MJX-CONTAINER", "MJX-ASSISTIVE-MML"]);
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      for (let el = node.parentElement; el; el = el.parentElement) {
        if (skip.has(el.tagName) || el.classList.contains("highlight")) return NodeFilter.FILTER_REJECT;
      }
      return NodeFilter.FILTER_ACCEPT;
    }
  });
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const t = n.textContent;
    for (const marker of ["\\(", "\\[", "$$"]) {
      const i = t.indexOf(marker);
      if (i >= 0) { raw.push(t.slice(Math.max(0, i - 20), i + 40).replace(/\s+/g, " ")); break; }
    }
  }
  const mathEls = document.querySelectorAll("span.math, div.math");
  let untypeset = 0;
  for (const el of mathEls) if (!el.querySelector("mjx-container")) untypeset += 1;
  const errors = [...document.querySelectorAll("mjx-merror, [data-mjx-error]")]
    .map(e => e.getAttribute("data-mjx-error") || e.textContent).slice(0, 5);
  return {
    math: mathEls.length,
    containers: document.querySelectorAll("mjx-container").length,
    untypeset, raw: raw.slice(0, 5), rawCount: raw.length, errors,
    mathjax: typeof window.MathJax === "object" && !!window.MathJax.startup,
  };
}
"""

# Code and output blocks whose content is wider than the box they sit in (so a reader must scroll
# sideways, and a printout cuts them), and blocks wider than the article column itself.
OVERFLOW_JS = r"""
() => {
  const article = document.querySelector("article.bd-article") || document.querySelector("main");
  if (!article) return [];
  const column = article.getBoundingClientRect();
  const cells = [...article.querySelectorAll("div.cell")];
  const blocks = article.querySelectorAll(
    "div.highlight pre, div.output pre, div.cell_output pre, div.cell_output table, div.cell_output img, pre.literal-block"
  );
  const out = [];
  for (const el of blocks) {
    const box = el.getBoundingClientRect();
    if (box.width === 0) continue;
    const hidden = el.scrollWidth - el.clientWidth;
    const beyond = box.right - column.right;
    const over = Math.max(hidden, beyond);
    if (over <= 1) continue;
    const cell = el.closest("div.cell");
    const inOutput = !!el.closest("div.cell_output, div.output");
    const text = el.tagName === "IMG" ? (el.getAttribute("alt") || "image") : el.textContent;
    const lines = text.split("\n");
    const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), "");
    out.push({
      cell: cell ? cells.indexOf(cell) + 1 : null,
      kind: el.tagName === "IMG" ? "image" : el.tagName === "TABLE" ? "table" : inOutput ? "output" : "code",
      over_px: Math.round(over),
      longest: longest.length,
      line: longest.trim().slice(0, 60),
    });
  }
  return out;
}
"""

# Is the primary navigation visible and on top, and does it hold the table of contents?
NAV_VISIBLE_JS = r"""
() => {
  const side = document.querySelector("#pst-primary-sidebar, .bd-sidebar-primary");
  if (!side) return {found: false};
  const box = side.getBoundingClientRect();
  const style = getComputedStyle(side);
  const links = [...side.querySelectorAll("nav a.reference")];
  let onTop = false;
  for (const a of links) {
    const r = a.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.bottom < 0 || r.top > innerHeight) continue;
    const hit = document.elementFromPoint(r.left + Math.min(8, r.width / 2), r.top + r.height / 2);
    if (hit && (hit === a || a.contains(hit) || hit.contains(a))) { onTop = true; break; }
  }
  return {
    found: true, links: links.length, onTop,
    visible: style.display !== "none" && style.visibility !== "hidden" && box.width > 50
      && box.right > 50 && box.left < innerWidth - 50,
  };
}
"""


@dataclass
class PageReport:
    """What the checks found on one page; ``failures`` names every failed check."""

    name: str
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    math: int = 0
    containers: int = 0
    raw_tex: int = 0
    tex_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    overflow: list[dict] = field(default_factory=list)
    weight_bytes: int = 0
    weight_by_kind: dict = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list, repr=False)

    def fail(self, check: str, detail: str = "") -> None:
        self.failures.append(check)
        if detail:
            self.notes.append(f"{check}: {detail}")


def list_pages(site: Path, selectors: list[str]) -> list[str]:
    """The site's HTML pages as paths relative to ``site``, filtered by the selectors given."""
    pages = sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not p.relative_to(site).as_posix().startswith(NOT_PAGES)
    )
    if not selectors:
        return pages
    chosen = []
    for sel in selectors:
        sel = sel.removeprefix("_build/html/").removesuffix(".ipynb").removesuffix(".md")
        hits = [p for p in pages if fnmatch.fnmatch(p, sel) or p == sel or p == f"{sel}.html"]
        if not hits:
            raise SystemExit(f"check_site: no page matches {sel!r}; pages are: {', '.join(pages)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def is_chapter(page: str) -> bool:
    return page.startswith("notebooks/")


def launch(playwright):
    """The system Chromium, headless, with a fresh profile; Playwright never downloads a browser here."""
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        raise SystemExit(
            "check_site: no Chromium found. Install Debian's browser with `apt-get install -y chromium` "
            "(or set CHROMIUM to its path), then run this again."
        )
    return playwright.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)


def local_request(url: str, http_host: str | None = None) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in LOCAL_SCHEMES:
        return True
    return parsed.scheme in ("http", "https", "ws") and parsed.hostname in {"127.0.0.1", http_host}


def new_page(context, report: PageReport, http_host: str | None = None):
    """A page that records console errors and blocks (and records) every request to another host."""
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and report.console_errors.append(m.text[:200]))
    page.on("pageerror", lambda e: report.console_errors.append(f"{e.name}: {e.message}"[:200]))

    def route(r):
        if local_request(r.request.url, http_host):
            r.continue_()
        else:
            report.remote_requests.append(r.request.url[:120])
            r.abort()

    page.route("**/*", route)
    page.on("requestfinished", lambda req: report.loaded.append(req.url))
    return page


def wait_for_mathjax(page) -> None:
    """Wait until MathJax, if the page loaded it, has typeset the page (at most 30 s)."""
    page.wait_for_load_state("load")  # also waits for async scripts such as MathJax itself
    with contextlib.suppress(Exception):
        page.wait_for_function(
            "() => !(window.MathJax && MathJax.startup && MathJax.startup.promise) || "
            "(MathJax.startup.promise.then(() => { window.__mjDone = true; }), window.__mjDone === true)",
            timeout=30_000,
        )


def page_weight(urls: list[str]) -> tuple[int, dict]:
    """Bytes of every local file the page loaded (HTML, scripts, styles, fonts, images), by kind."""
    by_kind: dict[str, int] = {}
    seen = set()
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            continue
        path = Path(unquote(parsed.path))
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        ext = path.suffix.lower()
        kind = {".js": "js", ".css": "css", ".html": "html", ".woff": "font", ".woff2": "font",
                ".ttf": "font", ".png": "image", ".svg": "image", ".jpg": "image", ".ico": "image"}.get(ext, "other")
        by_kind[kind] = by_kind.get(kind, 0) + path.stat().st_size
    return sum(by_kind.values()), by_kind


def check_duplicate_scripts(html: str, report: PageReport) -> None:
    soup = BeautifulSoup(html, "html.parser")
    srcs = [s["src"].split("?")[0] for s in soup.find_all("script", src=True)]
    dups = sorted({s for s in srcs if srcs.count(s) > 1})
    if dups:
        report.fail("duplicate-script", ", ".join(dups))


def check_images(page, report: PageReport) -> None:
    """Every content image says what it shows: alt text that is not empty or a file name."""
    bad = page.evaluate(
        r"""() => [...document.querySelectorAll("article img")].filter(img => {
              const alt = (img.getAttribute("alt") || "").trim();
              return !alt || /\.(png|svg|jpe?g)$/i.test(alt) || /^[0-9a-f]{16,}/i.test(alt);
            }).map(img => img.getAttribute("src"))"""
    )
    if bad:
        report.fail("img-alt", f"{len(bad)} image(s) without real alt text")


def check_math(page, report: PageReport) -> None:
    m = page.evaluate(MATH_JS)
    report.math, report.containers = m["math"], m["containers"]
    report.raw_tex, report.tex_errors = m["rawCount"] + m["untypeset"], m["errors"]
    if m["math"] and not m["mathjax"]:
        report.fail("mathjax", "the page has math but MathJax did not load")
    if report.raw_tex:
        report.fail("raw-tex", f"{m['untypeset']} math element(s) not typeset; raw text: {m['raw'][:2]}")
    if m["errors"]:
        report.fail("tex-error", "; ".join(m["errors"]))


def check_solutions(page, report: PageReport) -> None:
    """Exercise solutions start folded away, each behind its own toggle button."""
    folded = page.evaluate(
        """() => [...document.querySelectorAll('div.solution')].map(s =>
              s.classList.contains('toggle-hidden') && !!s.querySelector('button.toggle-button'))"""
    )
    if not all(folded):
        report.fail("solution-toggle", f"{folded.count(False)} of {len(folded)} solutions not behind a toggle")


def check_overflow(page, report: PageReport) -> None:
    report.overflow = page.evaluate(OVERFLOW_JS)
    if report.overflow:
        report.fail("overflow", f"{len(report.overflow)} block(s) wider than the column at 1280 px")


def click_visible(page, selector: str) -> bool:
    for handle in page.query_selector_all(selector):
        if handle.is_visible():
            handle.click()
            return True
    return False


def check_navigation(context, url: str, report: PageReport) -> None:
    """Phone and tablet: ☰ opens the drawer. Desktop: the sidebar shows, and ☰ hides it."""
    for label, size in (("phone", PHONE), ("tablet", TABLET)):
        page = new_page(context, report)
        page.set_viewport_size(size)
        page.goto(url)
        before = page.evaluate(NAV_VISIBLE_JS)
        if not before["found"]:
            page.close()
            continue  # a page without navigation (search results, index)
        if before["onTop"]:
            report.fail(f"nav-{label}", "the sidebar covers the page before ☰ is pressed")
        elif not click_visible(page, ".primary-toggle"):
            report.fail(f"nav-{label}", "no visible ☰ button")
        else:
            page.wait_for_timeout(400)
            after = page.evaluate(NAV_VISIBLE_JS)
            if not (after["visible"] and after["onTop"]):
                report.fail(f"nav-{label}", f"☰ did not open the navigation drawer ({after})")
        page.close()
    page = new_page(context, report)
    page.set_viewport_size(DESKTOP)
    page.goto(url)
    before = page.evaluate(NAV_VISIBLE_JS)
    if before["found"]:
        if not (before["visible"] and before["onTop"]):
            report.fail("nav-desktop", "the navigation sidebar is not shown at 1280 px")
        elif click_visible(page, ".primary-toggle"):
            page.wait_for_timeout(400)
            after = page.evaluate(NAV_VISIBLE_JS)
            if after["visible"] and after["onTop"]:
                report.fail("nav-desktop", "☰ did not hide the navigation sidebar at 1280 px")
        else:
            report.fail("nav-desktop", "no visible ☰ button at 1280 px")
        headers_with_search = page.evaluate(  # outside the page's own content (the search page has one)
            "() => [...document.querySelectorAll('form.bd-search, .search-button-field, .search-button')]"
            ".filter(e => e.offsetParent !== null && !e.closest('article, .bd-search-container')).length"
        )
        if headers_with_search > 1:
            report.fail("one-search-box", f"{headers_with_search} visible search boxes/buttons")
    page.close()


def check_links(site: Path, pages: list[str]) -> dict[str, list[str]]:
    """Internal links of each page whose file or anchor does not exist."""
    ids: dict[Path, set[str]] = {}

    def anchors(path: Path) -> set[str]:
        if path not in ids:
            soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
            ids[path] = {t["id"] for t in soup.find_all(id=True)} | {
                t["name"] for t in soup.find_all("a", attrs={"name": True})
            }
        return ids[path]

    broken: dict[str, list[str]] = {}
    for name in pages:
        path = site / name
        soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
        for a in soup.find_all("a", href=True):
            href = a["href"]
            parsed = urlparse(href)
            if parsed.scheme or href.startswith(("//", "mailto:", "javascript:")):
                continue
            target = (path.parent / unquote(parsed.path)).resolve() if parsed.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.setdefault(name, []).append(href)
            elif parsed.fragment and target.suffix == ".html" and unquote(parsed.fragment) not in anchors(target):
                broken.setdefault(name, []).append(href)
    return broken


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the report readable
        pass


@contextlib.contextmanager
def serve(site: Path):
    """The site over http on 127.0.0.1 and a free port, for as long as the block runs."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


def check_search(context, site: Path) -> list[str]:
    """Search for SEARCH_TERM over http and over file://; returns what failed."""
    failures = []
    with serve(site) as base:
        for label, url in (("http", f"{base}/search.html?q={SEARCH_TERM}"),
                           ("file", (site / "search.html").as_uri() + f"?q={SEARCH_TERM}")):
            report = PageReport(f"search ({label})")
            page = new_page(context, report, http_host="127.0.0.1")
            page.set_viewport_size(DESKTOP)
            page.goto(url)
            try:
                page.wait_for_selector("#search-results li", timeout=30_000)
                hits = len(page.query_selector_all("#search-results li"))
            except Exception:
                hits = 0
            page.close()
            if not hits:
                failures.append(f"search over {label} found nothing for {SEARCH_TERM!r}")
            for err in report.console_errors:
                failures.append(f"search over {label}: console error {err}")
            for req in report.remote_requests:
                failures.append(f"search over {label}: remote request {req}")
    return failures


def screenshot(context, url: str, out: Path, size: dict) -> None:
    page = context.new_page()
    page.route("**/*", lambda r: r.continue_() if local_request(r.request.url) else r.abort())
    page.set_viewport_size(size)
    page.goto(url)
    wait_for_mathjax(page)
    try:
        page.screenshot(path=str(out), full_page=True)
    except Exception:  # a page too tall for one image: keep its first screen
        page.screenshot(path=str(out))
    page.close()


def redirect_target(html: str) -> str | None:
    """Where a page that only redirects (``<meta http-equiv="refresh">``) sends the reader."""
    for meta in BeautifulSoup(html, "html.parser").find_all("meta", attrs={"http-equiv": True}):
        if meta["http-equiv"].lower() == "refresh":
            return meta.get("content", "").lower().partition("url=")[2].strip() or None
    return None


def check_page(context, site: Path, name: str, shots: Path | None) -> PageReport:
    report = PageReport(name)
    path = site / name
    url = path.as_uri()
    html = path.read_text(encoding="utf-8")
    target = redirect_target(html)
    if target is not None:  # the site's index.html sends readers to the landing page
        if not (path.parent / urlparse(target).path).is_file():
            report.fail("redirect", f"redirects to {target}, which does not exist")
        return report
    check_duplicate_scripts(html, report)
    if is_chapter(name) and not BeautifulSoup(html, "html.parser").select('a[href$=".ipynb"]'):
        report.fail("download-ipynb", "the chapter's download menu does not offer its .ipynb")
    page = new_page(context, report)
    page.set_viewport_size(DESKTOP)
    page.goto(url)
    wait_for_mathjax(page)
    page.wait_for_timeout(300)
    check_math(page, report)
    check_overflow(page, report)
    check_images(page, report)
    check_solutions(page, report)
    page.close()
    report.weight_bytes, report.weight_by_kind = page_weight(report.loaded)
    check_navigation(context, url, report)
    if report.console_errors:
        report.fail("console-error", " | ".join(sorted(set(report.console_errors))[:3]))
    if report.remote_requests:
        report.fail("remote-request", ", ".join(sorted(set(report.remote_requests))[:3]))
    if shots is not None and is_chapter(name):
        stem = Path(name).stem
        screenshot(context, url, shots / f"{stem}-desktop.png", DESKTOP)
        screenshot(context, url, shots / f"{stem}-phone.png", PHONE)
    return report


def print_report(reports: list[PageReport], broken: dict, search_failures: list[str]) -> None:
    print(f"{'page':<34} {'math':>5} {'raw':>4} {'err':>4} {'cons':>4} {'remote':>6} {'wide':>5} "
          f"{'weight':>8}  result")
    for r in reports:
        result = "ok" if not r.failures else "FAIL " + ",".join(dict.fromkeys(r.failures))
        print(f"{r.name:<34} {r.containers:>5} {r.raw_tex:>4} {len(r.tex_errors):>4} "
              f"{len(set(r.console_errors)):>4} {len(set(r.remote_requests)):>6} {len(r.overflow):>5} "
              f"{r.weight_bytes / 1e6:>6.2f}MB  {result}")
        for note in r.notes:
            print(f"    {note}")
        for o in r.overflow:
            print(f"    wide {o['kind']:<6} cell {o['cell']!s:>3}: {o['longest']:>3} chars, {o['over_px']:>4} px "
                  f"too wide: {o['line']}")
        for href in broken.get(r.name, []):
            print(f"    broken link: {href}")
    for f in search_failures:
        print(f"search: {f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", help="pages to check (e.g. notebooks/03_elbo, book/*); default all")
    parser.add_argument("--site", type=Path, default=DEFAULT_SITE, help="the built site (default _build/html)")
    parser.add_argument("--screenshots", type=Path, default=DEFAULT_SHOTS, help="where chapter screenshots go")
    parser.add_argument("--no-screenshots", action="store_true", help="skip the screenshots")
    parser.add_argument("--json", type=Path, help="also write the full report as JSON to this file")
    args = parser.parse_args(argv)

    site = args.site.resolve()
    if not (site / "index.html").is_file():
        raise SystemExit(f"check_site: no built site at {site}; run `make book` first.")
    pages = list_pages(site, args.pages)
    shots = None if args.no_screenshots else args.screenshots
    if shots:
        shots.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    start = time.time()
    reports = []
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context()
        for name in pages:
            print(f"checking {name}", file=sys.stderr, flush=True)
            try:
                reports.append(check_page(context, site, name, shots))
            except Exception as exc:  # report the page as failed and go on with the others
                report = PageReport(name)
                report.fail("checker-error", f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                reports.append(report)
        search_failures = check_search(context, site)
        context.close()
        browser.close()
    broken = check_links(site, pages)
    for name, hrefs in broken.items():
        next(r for r in reports if r.name == name).fail("broken-link", f"{len(hrefs)} link(s)")
    print_report(reports, broken, search_failures)

    failed = [r for r in reports if r.failures]
    total_links = sum(len(v) for v in broken.values())
    print(f"\n{len(pages)} pages checked in {time.time() - start:.0f} s: {len(pages) - len(failed)} passed, "
          f"{len(failed)} failed; {sum(len(r.overflow) for r in reports)} wide blocks; "
          f"{total_links} broken links; search {'ok' if not search_failures else 'FAILED'}.")
    if shots:
        print(f"Screenshots of the chapters: {shots}")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.__dict__.items() if k != "loaded"}
                                         for r in reports], indent=1))
    return 1 if failed or search_failures else 0


if __name__ == "__main__":
    sys.exit(main())
