"""The figures the chapters share: image grids and bar charts with consistent styling."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


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
