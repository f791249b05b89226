"""What the chapters show: the book's figure style, image grids, the package's own
source code as a highlighted block, tables that fit the page, and diagrams drawn in code
(an ANS stack step by step, a pipeline of boxes and arrows)."""

from __future__ import annotations

import inspect
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch

BOOK_STYLE = {
    "figure.dpi": 96,  # 1 pt = 1 CSS pt on the page: 10 pt text is 10 pt on screen
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "nearest",
}
"""rcParams of every figure in the book. A figure at most 7.5 inches wide fits the
website's column without being scaled down, so its text stays at 10 pt."""


def use_book_style() -> None:
    """Apply :data:`BOOK_STYLE`, and in a notebook draw figures at twice the pixels
    ("retina" PNG, shown at their normal size), so they stay sharp on high-resolution
    screens and projectors."""
    plt.rcParams.update(BOOK_STYLE)
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # not in a notebook; the rcParams still apply
        return
    set_matplotlib_formats("retina")


def show_source(obj):
    """The source code of ``obj`` (a function, method or class of vae_utils) as a
    highlighted Python block: a Markdown code fence, which Jupyter and the website
    both render with the same colours as the book's own code cells."""
    from IPython.display import Markdown

    source = textwrap.dedent(inspect.getsource(obj)).rstrip()
    return Markdown(f"```python\n{source}\n```")


def html_table(header, rows, align: str | None = None):
    """A table as HTML (``.data`` holds the markup): Jupyter and the website show it
    as a table that fits the page, where printed columns would run off its edge.
    ``align`` has one letter per column, ``l`` or ``r`` (default: all ``l``)."""
    from html import escape

    from IPython.display import HTML

    header, rows = [str(h) for h in header], [[str(c) for c in row] for row in rows]
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one letter l or r per column ({len(header)}), got {align!r}")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"every row needs {len(header)} cells like the header, got {row}")
    side = {"l": "left", "r": "right"}

    def line(cells, tag):
        return "<tr>" + "".join(f'<{tag} style="text-align: {side[a]}">{escape(c)}</{tag}>'
                                for c, a in zip(cells, align)) + "</tr>"

    body = "\n".join(line(row, "td") for row in rows)
    return HTML(f'<table class="table">\n<thead>{line(header, "th")}</thead>\n'
                f"<tbody>\n{body}\n</tbody>\n</table>")


def stack_diagram(steps, ax=None, colors: dict | None = None):
    """What an ANS stack holds after each step of a coder, as stacked bars.

    ``steps``: a sequence of ``(step, what, bits)``. ``bits > 0`` pushes a segment
    ``what`` of that many bits; ``bits < 0`` pops ``-bits`` bits off the top, from
    whatever segments lie there (``what`` is then ignored). Each ``what`` keeps one
    colour, keyed in a legend. Above each bar: its size and its change; the bits a
    pop took are outlined dashed. Returns the axes.
    """
    if not steps:
        raise ValueError("stack_diagram needs at least one (step, what, bits) step")
    stack, columns = [], []  # stack: [what, bits] segments, bottom first
    for step, what, bits in steps:
        if not np.isfinite(bits):
            raise ValueError(f"step {step!r}: bits must be a finite number, got {bits!r}")
        if bits >= 0:
            stack.append([what, float(bits)])
        elif -bits > sum(b for _, b in stack) + 1e-9:
            raise ValueError(f"step {step!r} pops {-bits} bits from a stack that holds fewer")
        else:
            left = -bits
            while left > 1e-9 and stack:
                taken = min(left, stack[-1][1])
                stack[-1][1] -= taken
                left -= taken
                if stack[-1][1] <= 1e-9:
                    stack.pop()
        columns.append((step, [tuple(segment) for segment in stack]))
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.4))
    whats = list(dict.fromkeys(what for _, what, bits in steps if bits >= 0))
    colors = {**{w: f"C{i}" for i, w in enumerate(whats)}, **(colors or {})}
    previous, top = None, 0.0
    for i, (step, segments) in enumerate(columns):
        size = 0.0
        for what, bits in segments:
            ax.bar(i, bits, bottom=size, width=0.6, color=colors[what], edgecolor="white",
                   linewidth=0.5)
            size += bits
        note = f"{size:.0f}"
        if previous is not None:
            note += f"\n({size - previous:+.0f})"
            if size < previous:
                ax.bar(i, previous - size, bottom=size, width=0.6, fill=False,
                       edgecolor="0.4", linestyle="--", linewidth=0.8)
        ax.text(i, max(size, previous or 0.0), note, ha="center", va="bottom")
        previous, top = size, max(top, size)
    ax.set_xticks(range(len(columns)), [step for step, _ in columns])
    ax.set_ylabel("bits on the stack")
    ax.set_ylim(0, 1.2 * top)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[w]) for w in whats]
    ax.legend(handles, whats, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def flow_diagram(nodes: dict, edges, ax=None, kinds: dict | None = None,
                 box: tuple[float, float] = (3.0, 0.6), fontsize: float = 10):
    """Boxes and arrows: a pipeline drawn to scale in data coordinates.

    ``nodes``: ``{name: (x, y, label, kind)}``, a ``box = (width, height)`` centred at
    ``(x, y)``; ``label`` is text, or an image ``(H, W)`` drawn there instead of a box.
    ``kinds`` maps each kind to a fill colour, keyed in a legend (kind ``None``: white).
    ``edges``: ``(from, to, label)`` arrows between the boxes' edges.
    """
    from matplotlib.patches import FancyBboxPatch

    kinds = kinds or {}
    unknown = {kind for *_, kind in nodes.values()} - set(kinds) - {None}
    if unknown:
        raise ValueError(f"kinds has no colour for {sorted(unknown)}")
    missing = {end for a, b, _ in edges for end in (a, b)} - set(nodes)
    if missing:
        raise ValueError(f"edges name nodes that do not exist: {sorted(missing)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.2))
    w, h = box
    size = {name: (w, h) if isinstance(label, str) else (1.4 * h, 1.4 * h)
            for name, (_, _, label, _) in nodes.items()}  # an image: a little taller
    for name, (x, y, label, kind) in nodes.items():
        if isinstance(label, str):
            ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                        boxstyle="round,pad=0.02,rounding_size=0.08",
                                        facecolor=kinds.get(kind, "white"), edgecolor="0.3",
                                        linewidth=0.8))
            ax.text(x, y, label, ha="center", va="center", fontsize=fontsize)
        else:
            r = size[name][1] / 2
            ax.imshow(tile(np.asarray(label)[None], ncols=1), cmap="gray_r", vmin=0, vmax=1,
                      extent=(x - r, x + r, y - r, y + r), zorder=2)
    for a, b, label in edges:
        (xa, ya, *_), (xb, yb, *_) = nodes[a], nodes[b]
        start, end = _box_exit(xa, ya, xb, yb, *size[a]), _box_exit(xb, yb, xa, ya, *size[b])
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(
            arrowstyle="-|>", color="0.2", lw=1.0, shrinkA=0, shrinkB=0))
        if label:
            ax.text((xa + xb) / 2, (ya + yb) / 2, f" {label}", ha="left", va="center",
                    fontsize=fontsize, color="0.25")
    pad = 0.25
    ax.set_xlim(min(x - size[n][0] / 2 for n, (x, *_) in nodes.items()) - pad,
                max(x + size[n][0] / 2 for n, (x, *_) in nodes.items()) + pad)
    ax.set_ylim(min(y - size[n][1] / 2 for n, (_, y, *_) in nodes.items()) - pad,
                max(y + size[n][1] / 2 for n, (_, y, *_) in nodes.items()) + pad)
    ax.set_aspect("equal")
    ax.set_axis_off()
    if kinds:
        from matplotlib.patches import Patch

        ax.legend([Patch(facecolor=c, edgecolor="0.3") for c in kinds.values()], list(kinds),
                  frameon=False, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncols=len(kinds))
    return ax


def _box_exit(x, y, x_to, y_to, w, h, gap=0.06):
    """Where the line from the centre of a ``w`` x ``h`` box at ``(x, y)`` towards
    ``(x_to, y_to)`` leaves the box, ``gap`` beyond its edge."""
    dx, dy = x_to - x, y_to - y
    along_x = abs((w / 2 + gap) / dx) if dx else np.inf
    along_y = abs((h / 2 + gap) / dy) if dy else np.inf
    return x + dx * min(along_x, along_y), y + dy * min(along_x, along_y)


def _as_numpy_images(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:  # (N, 1, H, W) tensors from the models
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W) or (N, 1, H, W), got {images.shape}")
    return images


def tile(images, ncols: int, pad: int = 1, pad_value: float = 0.3) -> np.ndarray:
    """Arrange ``(N, H, W)`` images into one ``(rows*(H+pad)-pad, ncols*(W+pad)-pad)`` array, row by row."""
    images = _as_numpy_images(images).astype(np.float32)
    if images.size and images.max() > 1:
        images = images / 255.0
    n, h, w = images.shape
    nrows = -(-n // ncols)
    canvas = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), pad_value, dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = image
    return canvas


def image_grid(images, ncols: int = 10, ax=None, title: str | None = None, size: float = 0.5):
    """Show images (uint8 0..255, or floats in [0, 1]) as a grid: black ink on white, thin grey lines between."""
    canvas = tile(images, ncols)
    if ax is None:
        rows = canvas.shape[0] / (canvas.shape[1] / ncols)
        _, ax = plt.subplots(figsize=(size * ncols, size * rows))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
