"""The trade-off plot, read from the matplotlib figure: labels never overprint, sensible axes for constant
scores, a legend of the drawn series only (issue 18 item 9)."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pytest

from lora_merge.evaluate.tradeoff_plot import MIN_SPAN, PlotPoint, axis_limits, text_box, tradeoff_figure, tradeoff_png


def sweep(general, skill, heuristic_at=None, recommended="ω=0.4"):
    pts = [PlotPoint("θG", 0.0, general[0], skill[0], reference=True)]
    for i, (g, s) in enumerate(zip(general[1:], skill[1:], strict=True), 1):
        w = round(0.2 * i, 1)
        pts.append(PlotPoint(f"ω={w:g}", w, g, s, recommended=f"ω={w:g}" == recommended))
    if heuristic_at is not None:
        g, s = heuristic_at
        pts.append(PlotPoint("ω=|D|/|G|", 0.25, g, s, heuristic=True))
    return pts


def label_boxes(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [text_box(t, r) for t in fig.axes[0].texts]  # as drawn


@pytest.fixture
def figure():
    figs = []

    def make(points, tolerance=1.0):
        figs.append(tradeoff_figure(points, "skill", "general", "t", tolerance))
        return figs[-1]

    yield make
    for f in figs:
        plt.close(f)


def test_constant_skill_score_gives_a_readable_axis_and_labels_that_do_not_overlap(figure):
    # every point scores 50 on the skill, general scores nearly equal: the labels would stack on one spot
    fig = figure(sweep([60.0, 59.99, 59.98, 59.97, 59.96, 59.95], [50.0] * 6, heuristic_at=(59.985, 50.0)))
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert hi - lo >= MIN_SPAN - 1e-9 and lo <= 50 <= hi
    lo, hi = ax.get_ylim()
    assert hi - lo >= MIN_SPAN - 1e-9 and 0 <= lo and hi <= 100
    boxes = label_boxes(fig)
    assert len(boxes) == 7
    assert not [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_identical_points_are_labelled_once():
    fig = tradeoff_figure(sweep([50.0, 50.0, 50.0], [10.0, 10.0, 10.0]), "s", "g", "t")
    try:
        assert [t.get_text() for t in fig.axes[0].texts] == ["θG = ω=0.2 = ω=0.4"]
    finally:
        plt.close(fig)


def test_legend_lists_drawn_series_only(figure):
    full = figure(sweep([60, 58, 55], [10, 30, 50], heuristic_at=(59, 20)), tolerance=1.0)
    assert [t.get_text() for t in full.axes[0].get_legend().get_texts()] == [
        "ω sweep", "within 1 of θG", "θG (ω = 0)", "ω = |D|/|G|", "recommended"]
    # no heuristic point, no tolerance, no recommendation: none of them in the legend
    bare = figure(sweep([60, 58], [10, 30], recommended=None), tolerance=None)
    assert [t.get_text() for t in bare.axes[0].get_legend().get_texts()] == ["ω sweep", "θG (ω = 0)"]


def test_axis_limits():
    assert axis_limits([50.0, 50.0]) == (45.0, 55.0)
    assert axis_limits([0.0, 0.0]) == (-0.5, 10.0)  # a score of 0 is not drawn on the frame
    assert axis_limits([100.0]) == (90.0, 100.5)
    lo, hi = axis_limits([20.0, 80.0])
    assert lo < 20 and hi > 80 and hi - lo == pytest.approx(78.0)


def test_png_is_the_fixed_size():
    png = tradeoff_png(sweep([60, 58, 55], [10, 30, 50]), "s", "g", "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 800 and int.from_bytes(png[20:24], "big") == 600


def test_the_sweep_line_passes_through_an_on_scale_heuristic_point_only(figure):
    """One pack's |D|/|G| point is a point of its ω sweep (the line goes through it in ω order); packs at different
    ω (|D|/|G| per pack) are marked beside the line, as is CFT."""
    pts = [PlotPoint("θG", 0.0, 70.0, 30.0, reference=True), PlotPoint("ω=0.5", 0.5, 75.0, 60.0, heuristic=True),
           PlotPoint("ω=1", 1.0, 65.0, 66.0), PlotPoint("CFT", 0.0, 72.0, 87.0, other=True)]
    line = figure(pts).axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [30.0, 60.0, 66.0] and list(line.get_ydata()) == [70.0, 75.0, 65.0]
    pts[1] = PlotPoint("|D|/|G| 0.5,0.2", 0.7, 75.0, 60.0, heuristic=True, off_scale=True)
    line = figure(pts).axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [30.0, 66.0]


def test_paired_intervals_are_drawn_as_error_bars_inside_the_axes():
    """Issue 32: each folded point's 95 % paired intervals against θG (as score bounds) are error bars, the axes
    reach their ends, and the non-inferiority margin is the shaded band."""
    from matplotlib.container import ErrorbarContainer

    pts = [PlotPoint("θG", 0.0, 60.0, 20.0, reference=True),
           PlotPoint("ω=0.5", 0.5, 58.0, 35.0, general_ci=(51.0, 63.0), skill_ci=(27.0, 44.0), recommended=True),
           PlotPoint("ω=1", 1.0, 50.0, 45.0, general_ci=(40.0, 57.0), skill_ci=(38.0, 53.0))]
    fig = tradeoff_figure(pts, "skill", "general", "t", 5.0, noninferior=True)
    try:
        ax = fig.axes[0]
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 2  # θG has none: it is the reference
        segments = [seg for c in bars for col in c.lines[2] for seg in col.get_segments()]
        ends = {tuple(map(tuple, seg)) for seg in segments}
        assert ((35.0, 51.0), (35.0, 63.0)) in ends and ((27.0, 58.0), (44.0, 58.0)) in ends  # general, skill bars
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert x0 < 27 and x1 > 53 and y0 < 40 and y1 > 63  # every bar end inside the frame
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "95 % paired interval vs θG" in labels and "non-inferiority margin −5" in labels
    finally:
        plt.close(fig)
