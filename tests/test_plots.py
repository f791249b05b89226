"""Tests of vae_utils.plots: the figure style, image tiles and shown source code."""

import inspect

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from vae_utils import elbo, plots  # noqa: E402


def test_show_source_is_a_python_fence_holding_the_exact_source():
    shown = plots.show_source(elbo.gaussian_kl).data
    lines = shown.splitlines()
    assert lines[0] == "```python" and lines[-1] == "```"
    assert "\n".join(lines[1:-1]) == inspect.getsource(elbo.gaussian_kl).rstrip()


def test_show_source_dedents_methods():
    from vae_utils.train import Trainer

    body = plots.show_source(Trainer.beta_at).data.splitlines()[1]
    assert body.startswith("def beta_at(")


def test_use_book_style_sets_ten_point_text():
    plots.use_book_style()
    for key in ("font.size", "legend.fontsize", "xtick.labelsize", "axes.labelsize"):
        assert matplotlib.rcParams[key] >= 10, key


def test_tile_layout_and_bad_shape():
    canvas = plots.tile(np.ones((5, 28, 28), dtype=np.uint8) * 255, ncols=3, pad=1)
    assert canvas.shape == (2 * 29 - 1, 3 * 29 - 1)
    assert canvas[:28, :28].min() == 1.0 and canvas[28, 0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        plots.tile(np.ones((28, 28)), ncols=2)
