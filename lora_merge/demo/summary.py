"""The demo's results: summary.json, summary.md, one trade-off plot per skill, the closing screen.

Rows come from the study's score store (``results/scores.json``): θG, every PTM point of a skill's ω sweep
and CFT, each PTM and CFT row with its paired intervals against θG per endpoint (``ci``). Each skill's verdict
follows the rule the config wrote down before the run (:mod:`lora_merge.demo.verdict`); the closing screen
prints the rule, then per skill what was measured with its interval, then the exact commands that fold, sweep
and evaluate the demo's own packs.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from lora_merge.core.output import replace_file
from lora_merge.demo.verdict import Verdict, judge, paired_endpoints, rule_text, share_interval
from lora_merge.evaluate.tradeoff_plot import PlotPoint, tradeoff_png

ROW_KEYS = ("skill", "method", "omega", "general", "skill_score", "skill_heldout", "lookalike", "lookalike_unseen",
            "ci")


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 1)


def _row(demo, skill: str, method: str, omega: float | None, label: str) -> dict:
    store, sets = demo.run.store, demo.data.skills[skill]

    def score(set_name: str | None) -> float | None:
        return _r(store.get(label, set_name)) if set_name else None

    ci = None if method == "theta_G" else paired_endpoints(store, label, sets, demo.run.cfg.rule.confidence)
    return {"skill": skill, "method": method, "omega": None if omega is None else round(omega, 4),
            "general": score("general"), "skill_score": score(sets.in_form), "skill_heldout": score(sets.held_out),
            "lookalike": score(sets.lookalike), "lookalike_unseen": score(sets.lookalike_unseen), "ci": ci}


def summary_rows(demo) -> list[dict]:
    """θG, PTM at each ω (ascending) and CFT, per skill; scores 0–100, None where a set does not apply."""
    store = demo.run.store
    rows = []
    for skill in demo.data.skills:
        rows.append(_row(demo, skill, "theta_G", None, "θG"))
        ptm = sorted(((e["meta"]["weights"][skill], label) for label, e in store.data.items()
                      if e["meta"].get("kind") == "ptm" and e["meta"].get("skill") == skill))
        rows += [_row(demo, skill, "PTM", omega, label) for omega, label in ptm]
        if f"CFT {skill}" in store.data:
            rows.append(_row(demo, skill, "CFT", None, f"CFT {skill}"))
    return rows


def heuristic_omega(demo, skill: str) -> float:
    """ω = |D|/|G| of a skill (rounded as the summary rows are)."""
    counts = demo.data.files.counts
    return round(counts[skill] / counts["general"], 4)


def _pick(rows: list[dict], skill: str, method: str, omega: float | None = None) -> dict | None:
    return next((r for r in rows if r["skill"] == skill and r["method"] == method
                 and (omega is None or r["omega"] == omega)), None)


def skill_verdicts(demo, rows: list[dict]) -> dict[str, Verdict]:
    """Each skill's verdict: PTM at ω = |D|/|G| judged by the config's rule."""
    rule, out = demo.run.cfg.rule, {}
    for skill, sets in demo.data.skills.items():
        h = heuristic_omega(demo, skill)
        p = _pick(rows, skill, "PTM", h)
        if p is None:
            continue
        unseen = (share_interval(demo.run.store, _ptm_label(demo, skill, h), sets.lookalike_unseen, rule.confidence)
                  if sets.lookalike_unseen else None)
        out[skill] = judge(skill, h, rule, p["ci"] or {}, unseen)
    return out


def _ptm_label(demo, skill: str, omega: float) -> str:
    return next(label for label, e in demo.run.store.data.items() if e["meta"].get("kind") == "ptm"
                and e["meta"].get("skill") == skill and round(e["meta"]["weights"][skill], 4) == omega)


def _d(e: dict | None) -> str:
    return "—" if e is None else f"{e['delta']:+.1f} [{e['low']:+.1f}, {e['high']:+.1f}]"


def verdicts(demo, rows: list[dict], judged: dict[str, Verdict]) -> list[str]:
    """One plain paragraph per skill: the verdict, what each endpoint measured with its interval, what CFT did."""
    lines = []
    for skill, v in judged.items():
        sets = demo.data.skills[skill]
        g, p, c = _pick(rows, skill, "theta_G"), _pick(rows, skill, "PTM", v.omega), _pick(rows, skill, "CFT")
        what = "refusals of unsafe requests" if sets.lookalike else f"{skill} score"
        ci = p["ci"] or {}
        text = (f"{skill}: {'TRANSFERRED' if v.transferred else 'did NOT transfer'} under the rule. PTM at "
                f"ω = |D|/|G| = {v.omega:g}: {what} {g['skill_score']:.1f} → {p['skill_score']:.1f} "
                f"({_d(ci.get('skill'))}); general {g['general']:.1f} → {p['general']:.1f} ({_d(ci.get('general'))}).")
        missed = [c_.asks for c_ in v.checks if not c_.holds]
        if missed:
            text += " Not met: " + "; ".join(missed) + "."
        if sets.held_out:
            text += (f" On forms it never trained on: {g['skill_heldout']:.1f} → {p['skill_heldout']:.1f} "
                     f"({_d(ci.get('skill_heldout'))}).")
        if sets.lookalike:
            text += f" Lookalikes answered, trained categories: θG {g['lookalike']:.1f}, PTM {p['lookalike']:.1f}"
            if sets.lookalike_unseen:
                text += f"; unseen categories: θG {g['lookalike_unseen']:.1f}, PTM {p['lookalike_unseen']:.1f}"
            text += "."
        if c is not None and c["ci"]:
            text += (f" CFT on the same data: {what} {_d(c['ci'].get('skill'))}, general "
                     f"{_d(c['ci'].get('general'))}.")
        lines.append(text)
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
    ref = _pick(rows, skill, "theta_G")

    def bars(r: dict) -> dict:  # the paired intervals against θG, drawn as scores around the point
        ci = r["ci"] or {}
        return {f"{k}_ci": (ref[col] + ci[e]["low"], ref[col] + ci[e]["high"]) if e in ci and ref else None
                for k, col, e in (("general", "general", "general"), ("skill", "skill_score", "skill"))}

    for r in rows:
        if r["skill"] != skill:
            continue
        if r["method"] == "theta_G":
            points.append(PlotPoint("θG", 0.0, r["general"], r["skill_score"], reference=True))
        elif r["method"] == "PTM":
            label = f"ω={r['omega']:g}" + (" (|D|/|G|)" if r["omega"] == h else "")
            points.append(PlotPoint(label, r["omega"], r["general"], r["skill_score"], heuristic=r["omega"] == h,
                                    **bars(r)))
        else:
            points.append(PlotPoint("CFT", 0.0, r["general"], r["skill_score"], other=True, **bars(r)))
    skill_name = "unsafe refused" if demo.data.skills[skill].lookalike else skill
    return tradeoff_png(points, skill_name, "general", f"{skill}: PTM (θG + ω·τ) and CFT on {demo.run.cfg.model.name}",
                        demo.run.cfg.rule.general_margin)


def summary_markdown(demo, rows: list[dict], lines: list[str]) -> str:
    cfg, counts = demo.run.cfg, demo.data.files.counts
    md = [f"# make demo: Merge to Learn on {cfg.model.name if not cfg.quick else 'a pico model (quick mode)'}", "",
          f"|G| = {counts['general']}, " + ", ".join(f"|D| {k} = {counts[k]}" for k in demo.data.skills)
          + f"; seed {cfg.seed}; data: {demo.data.source}.", "",
          "| skill | method | ω | general | skill | skill held-out | lookalike answered | unseen lookalike answered |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["skill"], {"theta_G": "θG"}.get(r["method"], r["method"]),
                 "—" if r["omega"] is None else f"{r['omega']:g}"]
        cells += ["—" if r[k] is None else f"{r[k]:.1f}"
                  for k in ("general", "skill_score", "skill_heldout", "lookalike", "lookalike_unseen")]
        md.append("| " + " | ".join(cells) + " |")
    md += ["", f"Change against θG, paired item by item: Δ [{100 * cfg.rule.confidence:g} % interval] (Newcombe).", "",
           "| skill | method | ω | general | skill | skill held-out | lookalike | unseen lookalike |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ci"]:
            cells = [r["skill"], r["method"], "—" if r["omega"] is None else f"{r['omega']:g}"]
            cells += [_d(r["ci"].get(k)) for k in ("general", "skill", "skill_heldout", "lookalike", "lookalike_unseen")]
            md.append("| " + " | ".join(cells) + " |")
    n = counts.get("eval/general")
    md += ["", "Scores 0–100 on eval items disjoint from training (greedy decoding; safety's skill score is the "
           "share of unsafe requests refused, lookalike the share of safe lookalikes answered: not refused, "
           "empty, degenerate or a template, by the rule of lora_merge/evaluate/answered.py). "
           f"{n} general items.", "", f"**The rule** (configs, `rule:`; fixed before the run): {rule_text(cfg.rule)}", ""]
    md += [f"- {line}" for line in lines]
    return "\n".join(md) + "\n"


def write_summary(demo) -> dict:
    """summary.json, summary.md and tradeoff_<skill>.png under the demo's folder; returns what it wrote."""
    out = Path(demo.run.out)
    rows = summary_rows(demo)
    judged = skill_verdicts(demo, rows)
    lines = verdicts(demo, rows, judged)
    record = {"seed": demo.run.cfg.seed, "rule": demo.run.cfg.rule.model_dump(),
              "skills": {k: v.to_dict() for k, v in judged.items()}, "rows": rows}
    replace_file(out / "summary.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    replace_file(out / "summary.md", summary_markdown(demo, rows, lines))
    plots = {}
    for skill in demo.data.skills:
        plots[skill] = out / f"tradeoff_{skill}.png"
        replace_file(plots[skill], plot_skill(demo, rows, skill))
    return {"rows": rows, "verdicts": lines, "judged": judged, "plots": plots}
