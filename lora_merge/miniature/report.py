"""Tables (markdown) and plots (PNG) of the miniature study, in the shape of the paper's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

SCORE_COLUMNS = (("general", "general"), ("skill", "skill"), ("safety", "unsafe refused"),
                 ("lookalike", "lookalike answered"))
COST_COLUMNS = ("instances", "steps", "tokens", "seconds")


def _num(v, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def skill_table(rows: Sequence, skill: str) -> str:
    """One skill: general, skill, safety columns, cost, and the update's size and direction."""
    head = ["method", "ω", "general", skill, "unsafe refused", "lookalike answered", *COST_COLUMNS,
            "‖τ‖/‖θpre‖", "cos(τG, τ)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        omega = "—" if r.omega is None else f"{r.omega:.2f}" + (" (\\|D\\|/\\|G\\|)" if r.note == "|D|/|G|" else "")
        sc = r.scores
        cells = [r.method, omega, _num(sc.get("general")), _num(sc.get(skill)), _num(sc.get("safety")),
                 _num(sc.get("lookalike"))]
        cells += [_num(r.cost.get(k), ",.0f" if k != "seconds" else ".1f") for k in COST_COLUMNS]
        cells += [_num(r.rel_norm, ".3f"), _num(r.cos_general, "+.3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def three_table(rows: Sequence) -> str:
    head = ["method", "general", "science", "coding", "safety (unsafe refused)", "lookalike answered", "steps",
            "‖Δ‖/‖θpre‖", "cos(τG, Δ)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sc = r.scores
        cells = [r.method] + [_num(sc.get(k)) for k in ("general", "science", "coding", "safety", "lookalike")]
        cells += [_num(r.cost.get("steps"), ",.0f"), _num(r.rel_norm, ".3f"), _num(r.cos_general, "+.3f")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({r.note for r in rows if r.note})
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


def skill_plot(rows: Sequence, skill: str, path: Path) -> Path:
    """General against skill score: both PTM ω curves, CFT, CFT + replay, RT, θG and θpre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    try:
        _draw(ax, rows, skill)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _draw(ax, rows: Sequence, skill: str) -> None:
    ref = next(r for r in rows if r.method == "θG")
    for label, color in (("PTM LoRA", "#4477aa"), ("PTM full", "#66ccee")):
        curve = sorted((r for r in rows if r.method == label and r.note != "|D|/|G|"), key=lambda r: r.omega)
        pts = [(ref.scores[skill], ref.scores["general"])] + [(r.scores[skill], r.scores["general"]) for r in curve]
        ax.plot([x for x, _ in pts], [y for _, y in pts], "-o", color=color, label=f"{label} ω 0→1")
        for r in curve:
            ax.annotate(f"{r.omega:g}", (r.scores[skill], r.scores["general"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        heur = [r for r in rows if r.method == label and r.note == "|D|/|G|"]
        if heur:
            ax.scatter([heur[0].scores[skill]], [heur[0].scores["general"]], marker="D", s=70, color=color,
                       edgecolors="black", zorder=5, label=f"{label} ω = |D|/|G| ({heur[0].omega:.2f})")
    for method, marker, color in (("CFT", "s", "#ee6677"), ("CFT + replay", "P", "#aa3377"), ("RT", "^", "#228833"),
                                  ("θG", "*", "black"), ("θpre", "x", "grey")):
        r = next((r for r in rows if r.method == method), None)
        if r is not None:
            ax.scatter([r.scores[skill]], [r.scores["general"]], marker=marker, s=110, color=color, label=method,
                       zorder=6)
    ax.set_xlabel(f"{skill} score (0–100)")
    ax.set_ylabel("general score (0–100)")
    ax.set_title(f"{skill}: general vs skill")
    ax.grid(alpha=0.3)


def summary_plot(rows: Sequence, three: Sequence, skills: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(skills) + 1, figsize=(5 * (len(skills) + 1), 4.5), dpi=90)
    try:
        for ax, skill in zip(axes, skills, strict=False):
            _draw(ax, [r for r in rows if r.skill == skill], skill)
        axes[0].legend(loc="lower left", fontsize=6)
        ax = axes[-1]
        keys = ("general", "science", "coding", "safety", "lookalike")
        width = 0.8 / max(1, len(three))
        for i, r in enumerate(three):
            ax.bar([k + i * width for k in range(len(keys))], [r.scores.get(k, 0) for k in keys], width,
                   label=r.method)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys, fontsize=8)
        ax.set_title("three skills at once")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_report(out: Path, rows: Sequence, three: Sequence, record: dict) -> dict[str, str]:
    """tables.md, one plot per skill, summary.png and results.json; returns name → path."""
    skills = list(dict.fromkeys(r.skill for r in rows))
    out.mkdir(parents=True, exist_ok=True)
    parts, artefacts = [], {}
    for skill in skills:
        mine = [r for r in rows if r.skill == skill]
        parts += [f"## {skill}", "", skill_table(mine, skill), ""]
        artefacts[f"plot_{skill}"] = str(skill_plot(mine, skill, out / f"tradeoff_{skill}.png"))
    parts += ["## three skills at once", "", three_table(three), ""]
    (out / "tables.md").write_text("\n".join(parts))
    artefacts["tables"] = str(out / "tables.md")
    artefacts["summary"] = str(summary_plot(rows, three, skills, out / "summary.png"))
    results = {"record": record, "rows": [asdict(r) for r in rows], "three_skill": [asdict(r) for r in three]}
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n")
    artefacts["results"] = str(out / "results.json")
    return artefacts
