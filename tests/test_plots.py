"""Tests of vae_utils.plots: the figure style, image tiles and shown source code."""

import inspect

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

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


def test_trace_stages_lists_each_layer_with_its_activation_and_shape():
    from vae_utils.model import ConvVAE

    stages = plots.trace_stages(ConvVAE().encoder, torch.zeros(1, 1, 28, 28))
    conv = "conv 4×4\nstride 2\n+ ReLU"
    assert stages == [
        (conv, (32, 14, 14)), (conv, (64, 7, 7)), ("flatten", (3136,)), ("dense\n+ ELU", (256,)), ("dense", (64,))
    ]


def test_architecture_diagram_labels_every_tensor_with_its_traced_shape():
    from vae_utils.model import ConvVAE, FCVAE

    ax = plots.architecture_diagram(ConvVAE(latent_dim=16, channels=(8, 16)))
    labels = [text.get_text().split("\n")[0] for text in ax.texts]
    for shape in ("1×28×28", "8×14×14", "16×7×7", "784", "256", "32", "16"):
        assert shape in labels
    assert labels.count("1×28×28") == 2  # the image in, the Bernoulli logits out
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["encoder q(z | x)", "latent z", "decoder p(x | z)"]
    ax = plots.architecture_diagram(FCVAE())
    assert "400" in [text.get_text().split("\n")[0] for text in ax.texts]
    plt.close("all")


def test_architecture_diagram_refuses_what_is_not_a_vae():
    with pytest.raises(TypeError, match="vae_utils VAE"):
        plots.architecture_diagram(torch.nn.Linear(2, 2))
