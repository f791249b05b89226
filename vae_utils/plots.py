"""What the chapters show: the book's figure style, image grids, and the package's own
source code as a highlighted block."""

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
