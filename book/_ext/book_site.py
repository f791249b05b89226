"""Small Sphinx additions for the book's website.

- ``authoryear``: a pybtex label and formatting style, so that the bibliography labels its entries the
  way the text cites them ("Kingma and Welling, 2014"), not with alpha keys ("KW14").
  Select it with ``bibtex_default_style: authoryear``.
- Thebe off: Jupyter Book always loads sphinx-thebe, whose scripts point to a CDN and run a Binder
  kernel; neither works offline, and its configuration script was emitted twice (a SyntaxError on every
  page). Its handlers are disconnected, so no page carries thebe.
- One copy of each script: the page's script list is de-duplicated (sphinx-togglebutton's selector
  script was emitted twice).
- The single-page build (``--builder singlehtml``, printed to the whole-book PDF by tools/book_pdf.py):
  Sphinx gives a builder that has handlers of its own (sphinx-exercise registers some for singlehtml) none
  of the ``html`` ones, so sphinx-proof's nodes had no handler there; they are copied over.
- The download menu: a chapter offers its ``.ipynb`` once (not twice, as notebook and as "source"), and
  the ".pdf" entry, which printed only the current page, is labelled for what it does: print this page.
"""

from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.alpha import Style as AlphaStyle
from pybtex.style.labels import BaseLabelStyle


def _last_names(person) -> str:
    """"van den Oord", "LeCun": the prelast and last names as the text shows them, LaTeX removed."""
    return " ".join(part.render_as("text") for part in person.rich_prelast_names + person.rich_last_names)


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels as the author-year citations read: "Kingma and Welling, 2014", "Burda et al., 2016".

    Two entries that would get the same label are told apart by a letter after the year (2016a, 2016b).
    """

    def format_label(self, entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [_last_names(p) for p in persons]
        if not names:
            who = entry.fields.get("key") or entry.key
        elif len(names) == 1:
            who = names[0]
        elif len(names) == 2:
            who = f"{names[0]} and {names[1]}"
        else:
            who = f"{names[0]} et al."
        return f"{who}, {entry.fields.get('year', 'n.d.')}"

    def format_labels(self, sorted_entries):
        labels = [self.format_label(e) for e in sorted_entries]
        count, seen = Counter(labels), Counter()
        for label in labels:
            if count[label] == 1:
                yield label
            else:
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]


class AuthorYearStyle(AlphaStyle):
    """pybtex's alpha style (entries sorted by author, year, title) with author-year labels."""

    default_label_style = "authoryear"


def disconnect_thebe(app, config) -> None:
    """Remove sphinx-thebe's event handlers (its scripts, styles and per-page configuration)."""
    for listeners in app.events.listeners.values():
        listeners[:] = [
            lst for lst in listeners if not getattr(lst.handler, "__module__", "").startswith("sphinx_thebe")
        ]
    app.registry.css_files = [(f, a) for f, a in app.registry.css_files if f != "sphinx-thebe.css"]


def share_html_handlers(app) -> None:
    """Let the single-page HTML builder render every node the multi-page one can."""
    handlers = app.registry.translation_handlers
    if app.builder.name != "html" and app.builder.format == "html" and app.builder.name in handlers:
        for node, visitors in handlers.get("html", {}).items():
            handlers[app.builder.name].setdefault(node, visitors)


def _script_key(js) -> tuple:
    attributes = {k: v for k, v in js.attributes.items() if k != "priority"}
    return (js.filename or "", tuple(sorted(attributes.items())))  # None and "" both mean inline


def tidy_page(app, pagename, templatename, context, doctree) -> None:
    """One copy of each script; the download menu without a second .ipynb and with "print", not ".pdf"."""
    if "script_files" in context:
        seen, unique = set(), []
        for js in context["script_files"]:
            if _script_key(js) not in seen:
                seen.add(_script_key(js))
                unique.append(js)
        context["script_files"] = unique
    for group in context.get("header_buttons", []):
        if group.get("label") != "download-buttons":
            continue
        buttons = group["buttons"]
        if any(b.get("label") == "download-notebook-button" for b in buttons):
            buttons[:] = [b for b in buttons if not (b.get("label") == "download-source-button"
                                                     and b.get("text") == ".ipynb")]
        for b in buttons:
            if b.get("label") == "download-pdf-button":
                b.update(text="print", icon="fas fa-print", tooltip="Print this page (or save it as PDF)")


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    app.connect("config-inited", disconnect_thebe)
    app.connect("html-page-context", tidy_page, priority=900)
    app.connect("builder-inited", share_html_handlers, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
