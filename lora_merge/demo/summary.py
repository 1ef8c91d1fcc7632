"""The demo's results: summary.json, summary.md, one trade-off plot per skill, the closing screen.

Rows come from the study's score store (``results/scores.json``): θG, every PTM point of a skill's ω sweep
and CFT, each PTM and CFT row with its paired intervals against θG per endpoint (``ci``). Each skill's verdict
follows the rule the config wrote down before the run (:mod:`lora_merge.demo.verdict`); the closing screen
prints the rule, then per skill what was measured with its interval, then the exact commands that fold, sweep
and evaluate the demo's own packs. Where the chat sets were scored, θG is first checked against θpre
(``theta_G_check``); where the template probe was, each model's summary of it (``probe``); and three real
prompts with what θG, PTM and CFT replied (:mod:`lora_merge.demo.replies`).
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from lora_merge.core.output import replace_file
from lora_merge.demo.replies import general_openings, probe_summaries, side_by_side
from lora_merge.demo.verdict import (
    CHAT,
    CHAT_ANSWERED,
    CHAT_DIGITS,
    Verdict,
    heuristic_omega,
    judge,
    paired_endpoints,
    ptm_label,
    rule_text,
    share_interval,
    theta_g_check,
)
from lora_merge.evaluate.template_probe import probe_table
from lora_merge.evaluate.tradeoff_plot import PlotPoint, tradeoff_png

ROW_KEYS = ("skill", "method", "omega", "general", "chat", "chat_answered", "skill_score", "skill_heldout", "lookalike",
            "lookalike_unseen", "ci")
# (row key, endpoint in ci, scores table header, change table header): both tables' columns after ω; chat's two
# only where some row has them
COLUMNS = (("general", "general", "general", "general"),
           (CHAT, CHAT, "chat log-lik/token", "chat (nats/token)"),
           (CHAT_ANSWERED, CHAT_ANSWERED, "chat answered", "chat answered"),
           ("skill_score", "skill", "skill", "skill"),
           ("skill_heldout", "skill_heldout", "skill held-out", "skill held-out"),
           ("lookalike", "lookalike", "lookalike answered", "lookalike"),
           ("lookalike_unseen", "lookalike_unseen", "unseen lookalike answered", "unseen lookalike"))


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 1)


def chat_loglik(score: float | None) -> float | None:
    """A chat (loss) set's stored score, 100·exp(−mean loss per token), as the mean log-likelihood per token
    (−loss, nats, 3 places); None when not scored."""
    return None if score is None or score <= 0 else round(math.log(score / 100.0), CHAT_DIGITS)


def _row(demo, skill: str, method: str, omega: float | None, label: str) -> dict:
    store, sets = demo.run.store, demo.data.skills[skill]

    def score(set_name: str | None) -> float | None:
        return _r(store.get(label, set_name)) if set_name else None

    ci = None if method == "theta_G" else paired_endpoints(store, label, sets, demo.run.cfg.rule.confidence)
    return {"skill": skill, "method": method, "omega": None if omega is None else round(omega, 4),
            "general": score("general"), CHAT: chat_loglik(store.get(label, CHAT)),
            CHAT_ANSWERED: score(CHAT_ANSWERED), "skill_score": score(sets.in_form), "skill_heldout": score(sets.held_out),
            "lookalike": score(sets.lookalike), "lookalike_unseen": score(sets.lookalike_unseen), "ci": ci}


def summary_rows(demo) -> list[dict]:
    """θG, PTM at each ω (ascending) and CFT, per skill; scores 0–100 (chat: the mean log-likelihood per token,
    nats), None where a set does not apply or was not scored."""
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
        unseen = (share_interval(demo.run.store, ptm_label(demo.run.store, skill, h), sets.lookalike_unseen,
                                 rule.confidence)
                  if sets.lookalike_unseen else None)
        out[skill] = judge(skill, h, rule, p["ci"] or {}, unseen)
    return out


def _d(e: dict | None, digits: int = 1) -> str:
    return "—" if e is None else f"{e['delta']:+.{digits}f} [{e['low']:+.{digits}f}, {e['high']:+.{digits}f}]"


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
                f"({_d(ci.get('skill'))}); general {g['general']:.1f} → {p['general']:.1f} ({_d(ci.get('general'))})"
                + (f"; chat retained {_d(ci[CHAT], CHAT_DIGITS)} nats/token" if CHAT in ci else "") + ".")
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


def theta_g_line(check: dict | None, margin: float | None, ceiling: float | None = None) -> str | None:
    """One line: θG against θpre on chat retained (with the margin), replies answered and toy general, θG's
    template share on the probe (with the ceiling), each where measured, and whether the check holds; None without
    a θpre to compare with."""
    if check is None:
        return None
    parts = []
    if CHAT in check:
        verdict = ("no margin in the rule" if margin is None else
                   f"margin {margin:g}: {'holds' if check[CHAT]['low'] >= -margin else 'fails'}")
        parts.append(f"chat retained Δ {_d(check[CHAT], CHAT_DIGITS)} nats/token ({verdict})")
    if CHAT_ANSWERED in check:
        parts.append(f"replies answered {_d(check[CHAT_ANSWERED])} points")
    if "general" in check:
        parts.append(f"toy general {_d(check['general'])} points")
    if check.get("template") is not None:
        limit = "" if ceiling is None else f" (ceiling {ceiling:g} %)"
        parts.append(f"θG's template share on the probe {check['template']:.1f} %{limit}")
    verdict = {True: " The check holds.", False: " The check FAILS: θG is not the chat model the rule asks for.",
               None: ""}[check.get("holds")]
    return ("θG against θpre before anything is folded: " + ("; ".join(parts) or "nothing measured on both") + "."
            + verdict)


def _tables(rows: list[dict], confidence: float) -> list[str]:
    """The scores table and the change table; chat's columns only where some row has them."""
    cols = [c for c in COLUMNS if c[0] not in (CHAT, CHAT_ANSWERED) or any(r[c[0]] is not None for r in rows)]

    def cell(value, key: str) -> str:
        return "—" if value is None else f"{value:.{CHAT_DIGITS if key == CHAT else 1}f}"

    def head(names: list[str]) -> list[str]:
        return ["| skill | method | ω | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]

    def first(r: dict, method: str) -> list[str]:
        return [r["skill"], method, "—" if r["omega"] is None else f"{r['omega']:g}"]

    md = head([c[2] for c in cols])
    for r in rows:
        md.append("| " + " | ".join(first(r, {"theta_G": "θG"}.get(r["method"], r["method"]))
                                    + [cell(r[c[0]], c[0]) for c in cols]) + " |")
    md += ["", f"Change against θG, paired item by item: Δ [{100 * confidence:g} % interval] (Newcombe"
           + ("; chat: a paired bootstrap of items, in nats per token" if any(c[0] == CHAT for c in cols) else "")
           + ").", ""]
    md += head([c[3] for c in cols])
    for r in rows:
        if r["ci"]:
            md.append("| " + " | ".join(first(r, r["method"]) + [_d(r["ci"].get(c[1]), CHAT_DIGITS if c[1] == CHAT
                                                                   else 1) for c in cols]) + " |")
    return md


def summary_markdown(demo, rows: list[dict], lines: list[str], check: dict | None = None,
                     probes: dict | None = None) -> str:
    """summary.md: sizes, the θG check, both tables, what the scores mean, the rule and the verdicts, then the
    template probe and three prompts side by side where they were scored."""
    cfg, counts = demo.run.cfg, demo.data.files.counts
    md = [f"# make demo: Merge to Learn on {cfg.model.name if not cfg.quick else 'a pico model (quick mode)'}", "",
          f"|G| = {counts['general']}, " + ", ".join(f"|D| {k} = {counts[k]}" for k in demo.data.skills)
          + f"; seed {cfg.seed}; data: {demo.data.source}.", ""]
    line = theta_g_line(check, cfg.rule.chat_margin, cfg.rule.template_ceiling)
    md += [line, ""] if line else []
    md += _tables(rows, cfg.rule.confidence)
    n, chat_n = counts.get("eval/general"), counts.get(f"eval/{CHAT}")
    md += ["", "Scores 0–100 on eval items disjoint from training (greedy decoding; safety's skill score is the "
           "share of unsafe requests refused, lookalike the share of safe lookalikes answered: not refused, "
           "empty, degenerate or a template, by the rule of lora_merge/evaluate/answered.py). "
           f"{n} general items."
           + (f" Chat: the mean log-likelihood per token (nats, −loss) of θpre's own answers to {chat_n} held-out "
              "ordinary requests (higher: closer to θpre); chat answered: the share of those requests the model's "
              "own reply answers." if chat_n else ""),
           "", f"**The rule** (configs, `rule:`; fixed before the run): {rule_text(cfg.rule)}", ""]
    md += [f"- {line}" for line in lines]
    if probes:
        md += ["", "## Template probe", "",
               "Each model's replies to the probe's ordinary, lookalike and harmful prompts (percent of the items of "
               "each kind; template: one reply given to several prompts).", "", probe_table(probes).rstrip("\n")]
    md += side_by_side(demo)
    return "\n".join(md) + "\n"


def write_summary(demo) -> dict:
    """summary.json, summary.md and tradeoff_<skill>.png under the demo's folder; returns what it wrote."""
    out = Path(demo.run.out)
    rows = summary_rows(demo)
    judged = skill_verdicts(demo, rows)
    lines = verdicts(demo, rows, judged)
    check = theta_g_check(demo.run.store, demo.run.cfg.rule, general_openings(demo))
    probes = probe_summaries(demo)
    record = {"seed": demo.run.cfg.seed, "rule": demo.run.cfg.rule.model_dump(),
              "skills": {k: v.to_dict() for k, v in judged.items()}, "rows": rows, "theta_G_check": check,
              "probe": {label: p.to_dict() for label, p in probes.items()} or None}
    replace_file(out / "summary.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    replace_file(out / "summary.md", summary_markdown(demo, rows, lines, check, probes))
    plots = {}
    for skill in demo.data.skills:
        plots[skill] = out / f"tradeoff_{skill}.png"
        replace_file(plots[skill], plot_skill(demo, rows, skill))
    return {"rows": rows, "verdicts": lines, "judged": judged, "plots": plots}
