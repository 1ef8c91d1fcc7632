"""The demo's results: summary.json rows, summary.md, one trade-off plot per skill, the closing screen.

Rows come from the study's score store (``results/scores.json``): θG, every PTM point of a skill's ω sweep
and CFT. The closing screen says in plain words which skill transferred (PTM at ω = |D|/|G| gaining at
least :data:`TRANSFER_GAIN` points), what it cost in general score and what CFT lost; then the exact
commands that fold, sweep and evaluate the demo's own packs.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from lora_merge.evaluate.tradeoff_plot import PlotPoint, tradeoff_png

TRANSFER_GAIN = 30.0  # points of skill score PTM must add at ω = |D|/|G| to count as "transferred"
GENERAL_TOLERANCE = 3.0  # points of general score within which PTM "kept" θG's
ROW_KEYS = ("skill", "method", "omega", "general", "skill_score", "skill_heldout", "lookalike")


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 1)


def _row(store, skill: str, sets, method: str, omega: float | None, label: str) -> dict:
    return {"skill": skill, "method": method, "omega": None if omega is None else round(omega, 4),
            "general": _r(store.get(label, "general")), "skill_score": _r(store.get(label, sets.in_form)),
            "skill_heldout": _r(store.get(label, sets.held_out)) if sets.held_out else None,
            "lookalike": _r(store.get(label, sets.lookalike)) if sets.lookalike else None}


def summary_rows(demo) -> list[dict]:
    """θG, PTM at each ω (ascending) and CFT, per skill; scores 0–100, None where a set does not apply."""
    store = demo.run.store
    rows = []
    for skill, sets in demo.data.skills.items():
        rows.append(_row(store, skill, sets, "theta_G", None, "θG"))
        ptm = sorted(((e["meta"]["weights"][skill], label) for label, e in store.data.items()
                      if e["meta"].get("kind") == "ptm" and e["meta"].get("skill") == skill))
        rows += [_row(store, skill, sets, "PTM", omega, label) for omega, label in ptm]
        if f"CFT {skill}" in store.data:
            rows.append(_row(store, skill, sets, "CFT", None, f"CFT {skill}"))
    return rows


def heuristic_omega(demo, skill: str) -> float:
    """ω = |D|/|G| of a skill (rounded as the summary rows are)."""
    counts = demo.data.files.counts
    return round(counts[skill] / counts["general"], 4)


def _pick(rows: list[dict], skill: str, method: str, omega: float | None = None) -> dict | None:
    return next((r for r in rows if r["skill"] == skill and r["method"] == method
                 and (omega is None or r["omega"] == omega)), None)


def verdict_word(gain: float, cost: float) -> str:
    """How a skill fared under PTM at |D|/|G|: a transfer needs the skill gain and θG's general score kept."""
    kept = cost >= -GENERAL_TOLERANCE
    if gain >= TRANSFER_GAIN:
        return "TRANSFERRED" if kept else "gained the skill but NOT general score (forgot)"
    return "partly transferred" if gain >= 10 else "did NOT transfer"


def verdicts(demo, rows: list[dict]) -> list[str]:
    """One plain paragraph per skill: did it transfer at |D|/|G|, at what general cost, and what CFT did."""
    lines = []
    for skill, sets in demo.data.skills.items():
        h = heuristic_omega(demo, skill)
        g, p, c = _pick(rows, skill, "theta_G"), _pick(rows, skill, "PTM", h), _pick(rows, skill, "CFT")
        if g is None or p is None:
            continue
        gain, cost = p["skill_score"] - g["skill_score"], p["general"] - g["general"]
        what = "refusals of unsafe requests" if sets.lookalike else f"{skill} score"
        word = verdict_word(gain, cost)
        text = (f"{skill}: {word}. PTM at ω = |D|/|G| = {h:g} took {what} from {g['skill_score']:.1f} to "
                f"{p['skill_score']:.1f} ({gain:+.1f}); general went {g['general']:.1f} → {p['general']:.1f} "
                f"({cost:+.1f}, {'within' if abs(cost) <= GENERAL_TOLERANCE else 'outside'} "
                f"{GENERAL_TOLERANCE:g} points of θG).")
        best = max((r for r in rows if r["skill"] == skill and r["method"] == "PTM"), key=lambda r: r["skill_score"])
        if best["omega"] != h and best["skill_score"] - g["skill_score"] >= gain + 10:
            text += (f" The most skill came at ω = {best['omega']:g}: {best['skill_score']:.1f}, general "
                     f"{best['general']:.1f}.")
        if c is not None:
            text += (f" CFT on the same data reached {c['skill_score']:.1f} ({c['skill_score'] - g['skill_score']:+.1f}) "
                     f"and general {c['general']:.1f} ({c['general'] - g['general']:+.1f}): it "
                     + ("lost more general score than PTM." if c["general"] < p["general"] else
                        "kept general score at least as well as PTM."))
        if sets.lookalike:
            text += (f" Safe lookalike prompts answered: θG {g['lookalike']:.1f}, PTM {p['lookalike']:.1f}"
                     + (f", CFT {c['lookalike']:.1f}." if c is not None else "."))
        if sets.held_out:
            hg = p["skill_heldout"] - g["skill_heldout"]
            text += (f" On forms it never trained on: {g['skill_heldout']:.1f} → {p['skill_heldout']:.1f} ({hg:+.1f}): "
                     + ("it carried beyond its training forms." if hg >= 10 else "it did not carry beyond them."))
        lines.append(text)
    if lines and not any("TRANSFERRED" in line for line in lines):
        lines.append(f"No skill met the bar in this run (≥ {TRANSFER_GAIN:g} points at ω = |D|/|G| with general within "
                     f"{GENERAL_TOLERANCE:g} points of θG). docs/results.md ('make demo') lists the draws and settings "
                     "tried; the transfer map (`make study-map`) shows where PTM transferred and where it did not.")
    return lines


def next_commands(demo) -> list[str]:
    """Commands that fold, sweep and evaluate the demo's packs, runnable from the repository root as printed."""
    run, files = demo.run, demo.data.files
    py = ".venv/bin/python cli.py"
    out, skills = Path(run.out), list(demo.data.skills)
    folded = out / "folded" / "+".join(skills)
    first = skills[0]
    sweep_evals = " ".join(f"--evals {g}={','.join(str(files.evals[s]) for s in ss)}"
                           for g, ss in _groups(files, ["general", *files.skill_evals(first)]).items())
    eval_evals = " ".join(f"--evals {g}={','.join(str(files.evals[s]) for s in ss)}"
                          for g, ss in _groups(files, list(files.evals)).items())
    q = shlex.quote
    return [
        f"{py} fold --general {q(str(run.general))} --adapters {','.join(skills)} --adapters-dir {q(str(run.adapters))} "
        f"--out {q(str(folded))} --force",
        f"{py} sweep --general {q(str(run.general))} --adapters {first} --adapters-dir {q(str(run.adapters))} "
        f"--omegas 0.25,0.5,0.75,1 {sweep_evals} --skill-group {files.group(files.skill_evals(first)[0])} "
        f"--batch-size {run.cfg.evaluation.batch_size} --max-new-tokens 12 --out {q(str(out / f'sweep-{first}'))} --force",
        f"{py} eval --model {q(str(folded))} {eval_evals} --batch-size {run.cfg.evaluation.batch_size} "
        f"--max-new-tokens 12 --out {q(str(out / 'eval-folded'))} --force",
    ]


def _groups(files, sets: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for s in sets:
        groups.setdefault(files.group(s), []).append(s)
    return groups


def plot_skill(demo, rows: list[dict], skill: str) -> bytes:
    """general against skill score: the ω sweep (|D|/|G| marked), θG, and CFT as its own marker."""
    h = heuristic_omega(demo, skill)
    points = []
    for r in rows:
        if r["skill"] != skill:
            continue
        if r["method"] == "theta_G":
            points.append(PlotPoint("θG", 0.0, r["general"], r["skill_score"], reference=True))
        elif r["method"] == "PTM":
            label = f"ω={r['omega']:g}" + (" (|D|/|G|)" if r["omega"] == h else "")
            points.append(PlotPoint(label, r["omega"], r["general"], r["skill_score"], heuristic=r["omega"] == h))
        else:
            points.append(PlotPoint("CFT", 0.0, r["general"], r["skill_score"], other=True))
    skill_name = "unsafe refused" if demo.data.skills[skill].lookalike else skill
    return tradeoff_png(points, skill_name, "general", f"{skill}: PTM (θG + ω·τ) and CFT on {demo.run.cfg.model.name}",
                        GENERAL_TOLERANCE)


def summary_markdown(demo, rows: list[dict], lines: list[str]) -> str:
    cfg, counts = demo.run.cfg, demo.data.files.counts
    md = [f"# make demo: Merge to Learn on {cfg.model.name if not cfg.quick else 'a pico model (quick mode)'}", "",
          f"|G| = {counts['general']}, " + ", ".join(f"|D| {k} = {counts[k]}" for k in demo.data.skills)
          + f"; seed {cfg.seed}; data: {demo.data.source}.", "",
          "| skill | method | ω | general | skill | skill held-out | lookalike answered |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["skill"], {"theta_G": "θG"}.get(r["method"], r["method"]),
                 "—" if r["omega"] is None else f"{r['omega']:g}"]
        cells += ["—" if r[k] is None else f"{r[k]:.1f}" for k in ("general", "skill_score", "skill_heldout", "lookalike")]
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "Beyond the template (ω = |D|/|G| for PTM): the skill on its training forms and on held-out forms.", "",
           "| skill | method | in form | held out | gap (held out − in form) |", "|---|---|---|---|---|"]
    for skill in demo.data.skills:
        h = heuristic_omega(demo, skill)
        for method, omega in (("theta_G", None), ("PTM", h), ("CFT", None)):
            r = _pick(rows, skill, method, omega)
            if r is None or r["skill_heldout"] is None:
                continue
            md.append(f"| {skill} | {'θG' if method == 'theta_G' else method} | {r['skill_score']:.1f} | "
                      f"{r['skill_heldout']:.1f} | {r['skill_heldout'] - r['skill_score']:+.1f} |")
    n = {k: counts.get(f"eval/{s}") for k, s in (("general", "general"),)}
    md += ["", "Scores 0–100 on eval items disjoint from training (greedy decoding; safety's skill score is the "
           "share of unsafe requests refused, lookalike the share of safe lookalikes answered). "
           f"{n['general']} general items: one item is {100 / max(n['general'] or 1, 1):.2f} points.", ""]
    md += [f"- {line}" for line in lines]
    return "\n".join(md) + "\n"


def _write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def write_summary(demo) -> dict:
    """summary.json, summary.md and tradeoff_<skill>.png under the demo's folder; returns what it wrote."""
    out = Path(demo.run.out)
    rows = summary_rows(demo)
    lines = verdicts(demo, rows)
    _write(out / "summary.json", json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    _write(out / "summary.md", summary_markdown(demo, rows, lines))
    plots = {}
    for skill in demo.data.skills:
        plots[skill] = out / f"tradeoff_{skill}.png"
        _write(plots[skill], plot_skill(demo, rows, skill))
    return {"rows": rows, "verdicts": lines, "plots": plots}
