"""tradeoff.png: general score against skill score, one labelled point per ω (the paper's trade-off plot).

Each folded point carries its 95 % paired intervals against θG, when the sweep measured them, drawn as error bars
(general vertically, skill horizontally) from θG's score + the interval's low end to θG's score + its high end.
The tolerance band is the rule's: under ``general-noninferior:X`` a point qualifies when its general bar's low end
stays above the band's floor (θG − X).

Readable whatever the scores: ω labels are placed where they overlap no other label (a small search over offsets
around each point), each axis spans at least MIN_SPAN score points (a constant score gives 45–55, not
−0.04…0.04), and the legend lists only the series drawn inside the axes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

PLOT_SIZE_PX = (800, 600)
_DPI = 100
MIN_SPAN = 10.0  # score points: the smallest range an axis shows
EDGE_MARGIN = 0.05  # the least gap between a value and the frame, as a share of the axis span
_MARKER_PX = 9.0  # half the side of the square a point's marker is kept clear in
# Label offsets tried around a point (points; with the alignment that keeps the text off the marker), nearest first.
_OFFSETS = [((6, 6), "left", "bottom"), ((6, -6), "left", "top"), ((-6, 6), "right", "bottom"),
            ((-6, -6), "right", "top"), ((0, 10), "center", "bottom"), ((0, -10), "center", "top"),
            ((10, 0), "left", "center"), ((-10, 0), "right", "center")]


@dataclass(frozen=True)
class PlotPoint:
    label: str
    order: float  # position along the sweep (scale ω; the heuristic point by its total ω)
    general: float
    skill: float
    reference: bool = False  # θG
    heuristic: bool = False  # ω = |D|/|G|
    recommended: bool = False
    other: bool = False  # another method beside the sweep (e.g. CFT): its own marker, off the ω line
    off_scale: bool = False  # packs at different ω (|D|/|G| per pack): not a point of the one-scale ω line
    general_ci: tuple[float, float] | None = None  # the general score's 95 % paired interval against θG, as scores
    skill_ci: tuple[float, float] | None = None


def axis_limits(values: Sequence[float], min_span: float = MIN_SPAN, lo: float = 0.0,
                hi: float = 100.0) -> tuple[float, float]:
    """Limits that show every value with a 15 % margin and span at least ``min_span``, kept inside [lo, hi]
    when the values are (scores are 0–100), but never with a value on the frame: a score of 0 or 100 keeps
    :data:`EDGE_MARGIN` of the span between it and the edge, so its marker and label are not hidden by the axis."""
    vmin, vmax = min(values), max(values)
    span = max((vmax - vmin) * 1.3, min_span)
    mid = (vmin + vmax) / 2
    low = mid - span / 2
    if span <= hi - lo and vmin >= lo and vmax <= hi:  # slide the window inside the score range
        low = min(max(low, lo), hi - span)
    high = low + span
    return min(low, vmin - EDGE_MARGIN * span), max(high, vmax + EDGE_MARGIN * span)


def tradeoff_png(points: Sequence[PlotPoint], skill_name: str, general_name: str, title: str,
                 tolerance: float | None = None, noninferior: bool = False) -> bytes:
    """PNG bytes of exactly PLOT_SIZE_PX pixels (no tight bounding box, so the size is fixed)."""
    import matplotlib.pyplot as plt

    fig = tradeoff_figure(points, skill_name, general_name, title, tolerance, noninferior)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI)
        return buf.getvalue()
    finally:
        plt.close(fig)


def tradeoff_figure(points: Sequence[PlotPoint], skill_name: str, general_name: str, title: str,
                    tolerance: float | None = None, noninferior: bool = False):
    """The matplotlib figure of the plot (the caller closes it); tests look at its texts, limits and legend.

    ``tolerance`` shades θG − tolerance … θG: the general-within band, or with ``noninferior`` the margin the
    general intervals' low ends must stay above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(PLOT_SIZE_PX[0] / _DPI, PLOT_SIZE_PX[1] / _DPI), dpi=_DPI)
    # the |D|/|G| point is on the line when it is a point of the same one-scale sweep (one pack, or a grid point)
    line = sorted((p for p in points if not p.off_scale and not p.other), key=lambda p: p.order)
    if len(line) > 1:
        ax.plot([p.skill for p in line], [p.general for p in line], "-o", color="#4477aa", zorder=2, label="ω sweep")
    ref = next((p for p in points if p.reference), None)
    if ref is not None:
        ax.axhline(ref.general, color="grey", ls="--", lw=1, zorder=1)
        if tolerance is not None and tolerance > 0:
            ax.axhspan(ref.general - tolerance, ref.general, color="grey", alpha=0.12, zorder=0,
                       label=f"non-inferiority margin −{tolerance:g}" if noninferior else f"within {tolerance:g} of θG")
        ax.scatter([ref.skill], [ref.general], marker="*", s=260, color="black", zorder=4, label="θG (ω = 0)")
    for subset, style in (([p for p in points if p.heuristic],
                           {"marker": "D", "s": 90, "color": "#ee6677", "zorder": 5, "label": "ω = |D|/|G|"}),
                          ([p for p in points if p.other],
                           {"marker": "s", "s": 90, "color": "#ccbb44", "edgecolors": "black", "zorder": 5,
                            "label": ", ".join(dict.fromkeys(p.label for p in points if p.other))}),
                          ([p for p in points if p.recommended],
                           {"s": 380, "facecolors": "none", "edgecolors": "#228833", "linewidths": 2.2, "zorder": 6,
                            "label": "recommended"})):
        if subset:
            ax.scatter([p.skill for p in subset], [p.general for p in subset], **style)
    _error_bars(ax, points)
    # Scale to the points and their intervals (a bar cut by the frame would look narrower than it is), not to the
    # tolerance band (it would flatten small differences).
    ax.set_xlim(*axis_limits([v for p in points for v in (p.skill, *(p.skill_ci or ()))]))
    ax.set_ylim(*axis_limits([v for p in points for v in (p.general, *(p.general_ci or ()))]))
    ax.set_xlabel(f"{skill_name} score (0–100)")
    ax.set_ylabel(f"{general_name} score (0–100)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    place_labels(fig, ax, points)
    handles = [h for h in ax.get_legend_handles_labels()[0] if _visible(ax, h)]
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8)
    return fig


def _error_bars(ax, points: Sequence[PlotPoint]) -> None:
    """Each point's 95 % paired intervals against θG as error bars (one legend entry for all of them)."""
    label = "95 % paired interval vs θG"
    for p in points:
        if p.general_ci is None and p.skill_ci is None:
            continue
        # max(0, ·): a bootstrap's percentile interval need not hold its own point estimate
        yerr = [[max(0.0, p.general - p.general_ci[0])], [max(0.0, p.general_ci[1] - p.general)]] \
            if p.general_ci else None
        xerr = [[max(0.0, p.skill - p.skill_ci[0])], [max(0.0, p.skill_ci[1] - p.skill)]] if p.skill_ci else None
        ax.errorbar([p.skill], [p.general], xerr=xerr, yerr=yerr, fmt="none", ecolor="#4477aa", alpha=0.45,
                    elinewidth=1.2, capsize=3, zorder=1, label=label)
        label = None


def place_labels(fig, ax, points: Sequence[PlotPoint]) -> None:
    """Annotate each point with its label at the first offset (growing rings of _OFFSETS) whose text box overlaps
    no label placed before it; points at the same place are labelled once, joined ('ω=0.2 = ω=|D|/|G|')."""
    renderer = fig.canvas.get_renderer()
    merged: dict[tuple[float, float], list[str]] = {}
    for p in points:
        merged.setdefault((round(p.skill, 9), round(p.general, 9)), []).append(p.label)
    from matplotlib.transforms import Bbox

    # the markers are obstacles too: a label never covers a point
    markers = [Bbox.from_bounds(*(ax.transData.transform((x, y)) - _MARKER_PX), 2 * _MARKER_PX, 2 * _MARKER_PX)
               for x, y in merged]
    placed: list = []
    for (x, y), labels in merged.items():
        text = " = ".join(dict.fromkeys(labels))
        for ring in range(1, 7):
            for (dx, dy), ha, va in _OFFSETS:
                ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx * ring, dy * ring), ha=ha,
                                  va=va, fontsize=9, arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6}
                                  if ring > 1 else None)
                box = text_box(ann, renderer)
                if not any(box.overlaps(b) for b in placed + markers):
                    placed.append(box)
                    break
                ann.remove()
            else:
                continue
            break
        else:  # no free place within six rings (dozens of labels in one spot): keep the nearest
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
            placed.append(text_box(ann, renderer))


def text_box(ann, renderer):
    """The window extent of an annotation's text alone (its leader line may cross other boxes)."""
    from matplotlib.text import Text

    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


def _visible(ax, handle) -> bool:
    """Whether a legend handle's data lie (at least partly) inside the axes' limits."""
    import numpy as np
    from matplotlib.container import ErrorbarContainer

    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if isinstance(handle, ErrorbarContainer):  # error bars: drawn around points, inside the limits set for them
        return True
    if hasattr(handle, "get_offsets"):  # scatter
        xy = np.asarray(handle.get_offsets())
    elif hasattr(handle, "get_xydata"):  # line
        xy = np.asarray(handle.get_xydata())
    else:  # a patch (the tolerance band): its vertical extent
        box = handle.get_path().transformed(handle.get_patch_transform()).get_extents()
        return box.y1 >= y0 and box.y0 <= y1
    return bool(len(xy)) and bool(np.any((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)))
