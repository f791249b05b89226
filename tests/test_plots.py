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


def test_html_table_escapes_aligns_and_checks_widths():
    table = plots.html_table(["codec", "bits/dim"], [["a<b", 0.25], ["gzip", "0.33"]], align="lr")
    assert table.data.splitlines() == [
        '<table class="table">',
        '<thead><tr><th style="text-align: left">codec</th>'
        '<th style="text-align: right">bits/dim</th></tr></thead>',
        "<tbody>",
        '<tr><td style="text-align: left">a&lt;b</td><td style="text-align: right">0.25</td></tr>',
        '<tr><td style="text-align: left">gzip</td><td style="text-align: right">0.33</td></tr>',
        "</tbody>",
        "</table>",
    ]
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        plots.html_table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError, match="one letter l or r per column"):
        plots.html_table(["a", "b"], [[1, 2]], align="lc")


def test_stack_diagram_pops_from_the_top_and_labels_sizes():
    import matplotlib.pyplot as plt

    steps = [("start", "seed", 100), ("pop", None, -30), ("push x", "x", 20), ("push z", "z", 50),
             ("pop", None, -60)]
    ax = plots.stack_diagram(steps)
    # Solid bars: each column's segments, bottom up; the last pop took all of z and 10 bits of x.
    solid = [(round(p.get_x() + p.get_width() / 2), p.get_y(), p.get_height())
             for p in ax.patches if p.get_fill()]
    assert [bar for bar in solid if bar[0] == 4] == [(4, 0.0, 70.0), (4, 70.0, 10.0)]
    assert [bar for bar in solid if bar[0] == 3] == [(3, 0.0, 70.0), (3, 70.0, 20.0), (3, 90.0, 50.0)]
    dashed = [(p.get_y(), p.get_height()) for p in ax.patches if not p.get_fill()]
    assert dashed == [(70.0, 30.0), (80.0, 60.0)]  # what the two pops took
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["100", "70\n(-30)", "90\n(+20)", "140\n(+50)", "80\n(-60)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed", "x", "z"]
    plt.close("all")


def test_stack_diagram_refuses_popping_more_than_the_stack_holds():
    with pytest.raises(ValueError, match="pops 11 bits from a stack that holds fewer"):
        plots.stack_diagram([("start", "seed", 10), ("pop", None, -11)])
    with pytest.raises(ValueError, match="at least one"):
        plots.stack_diagram([])


def test_flow_diagram_draws_every_box_and_arrow_and_checks_names():
    import matplotlib.pyplot as plt

    nodes = {"x": (0, 0, np.zeros((28, 28), dtype=np.uint8), None), "enc": (0, -1, "encoder", "net"),
             "file": (2, -1, "file", "bytes")}
    ax = plots.flow_diagram(nodes, [("x", "enc", ""), ("enc", "file", "bits")],
                            kinds={"net": "#cfe2f3", "bytes": "0.9"})
    assert len(ax.images) == 1 and len(ax.patches) == 2  # one image, two boxes
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 2
    (x0, y0), (x1, y1) = arrows[1].xyann, arrows[1].xy  # enc -> file starts and ends at box edges
    assert x0 == pytest.approx(0 + 1.5 + 0.06) and x1 == pytest.approx(2 - 1.5 - 0.06)
    assert y0 == y1 == -1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["net", "bytes"]
    with pytest.raises(ValueError, match="no colour for"):
        plots.flow_diagram(nodes, [], kinds={"net": "blue"})
    with pytest.raises(ValueError, match="do not exist"):
        plots.flow_diagram(nodes, [("x", "nowhere", "")], kinds={"net": "b", "bytes": "c"})
    plt.close("all")
