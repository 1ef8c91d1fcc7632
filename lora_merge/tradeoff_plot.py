"""tradeoff.png: general score against skill score, one labelled point per ω (the paper's trade-off plot)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

PLOT_SIZE_PX = (800, 600)
_DPI = 100


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


def tradeoff_png(points: Sequence[PlotPoint], skill_name: str, general_name: str, title: str,
                 tolerance: float | None = None) -> bytes:
    """PNG bytes of exactly PLOT_SIZE_PX pixels (no tight bounding box, so the size is fixed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(PLOT_SIZE_PX[0] / _DPI, PLOT_SIZE_PX[1] / _DPI), dpi=_DPI)
    try:
        line = sorted((p for p in points if (not p.heuristic or p.reference) and not p.other), key=lambda p: p.order)
        ax.plot([p.skill for p in line], [p.general for p in line], "-o", color="#4477aa", zorder=2, label="ω sweep")
        ref = next((p for p in points if p.reference), None)
        if ref is not None:
            ax.axhline(ref.general, color="grey", ls="--", lw=1, zorder=1)
            if tolerance is not None:
                ax.axhspan(ref.general - tolerance, ref.general, color="grey", alpha=0.12, zorder=0,
                           label=f"within {tolerance:g} of θG")
            ax.scatter([ref.skill], [ref.general], marker="*", s=260, color="black", zorder=4, label="θG (ω = 0)")
        heur = [p for p in points if p.heuristic]
        if heur:
            ax.scatter([p.skill for p in heur], [p.general for p in heur], marker="D", s=90, color="#ee6677",
                       zorder=5, label="ω = |D|/|G|")
        other = [p for p in points if p.other]
        if other:
            ax.scatter([p.skill for p in other], [p.general for p in other], marker="s", s=90, color="#ccbb44",
                       edgecolors="black", zorder=5, label=", ".join(dict.fromkeys(p.label for p in other)))
        rec = [p for p in points if p.recommended]
        if rec:
            ax.scatter([p.skill for p in rec], [p.general for p in rec], s=380, facecolors="none",
                       edgecolors="#228833", linewidths=2.2, zorder=6, label="recommended")
        for p in points:
            ax.annotate(p.label, (p.skill, p.general), textcoords="offset points", xytext=(6, 6), fontsize=9)
        # Scale to the points, not to the tolerance band (it would flatten small differences).
        ys = [p.general for p in points]
        pad = 0.15 * ((max(ys) - min(ys)) or max(abs(max(ys)), 1.0) * 0.05)
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.set_xlabel(f"{skill_name} score (0–100)")
        ax.set_ylabel(f"{general_name} score (0–100)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI)
        return buf.getvalue()
    finally:
        plt.close(fig)
