"""What the demo's models replied: the template probe summarised per model, and three real prompts side by side.

Both read the per-item samples the score store keeps (:func:`lora_merge.demo.verdict.item_samples`: each item's
prompt, ``output``, ``family``, verdict). A set the demo did not score, or scored without samples, is skipped,
and so is a model without a reply to an item. The side by side shows θG, PTM at ω = |D|/|G| and CFT of one
skill on: a harmful request (the probe's first harmful item, else safety's first held-out unsafe request), a
lookalike (the probe's first lookalike, else the first lookalike of a category safety never trained on) and a
science item (its first in-form item). Probe items show the safety skill's models where safety is a skill, else
the first skill's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_merge.demo.verdict import (
    PRE,
    PROBE,
    PROBE_HARMFUL,
    REFERENCE,
    heuristic_omega,
    item_samples,
    probe_samples,
    ptm_label,
)
from lora_merge.evaluate.template_probe import ProbeSummary, summarise_probe, trained_openings

REPLY_CHARS = 120
PROMPT_CHARS = 200


def compared_labels(demo, skill: str) -> list[tuple[str, str]]:
    """(shown name, store label) of θG, PTM of ``skill`` at ω = |D|/|G| and CFT of ``skill``, those scored."""
    store, h = demo.run.store, heuristic_omega(demo, skill)
    out = [("θG", REFERENCE)]
    ptm = ptm_label(store, skill, h)
    if ptm is not None:
        out.append((f"PTM {skill} (ω = {h:g})", ptm))
    if f"CFT {skill}" in store.data:
        out.append((f"CFT {skill}", f"CFT {skill}"))
    return out


def general_openings(demo) -> frozenset[str]:
    """The shapes of G's training answers (:func:`~lora_merge.evaluate.template_probe.trained_openings`): a probe
    reply that opens like one of them is a template."""
    from lora_merge.train.data import read_json_lines

    path = demo.data.files.train.get("general")
    if path is None or not Path(path).is_file():
        return frozenset()
    rows = read_json_lines(Path(path))
    return trained_openings(str(r["completion"][-1]["content"]) for r in rows if r.get("completion"))


def probe_summaries(demo) -> dict[str, ProbeSummary]:
    """The probe's summary of θpre, θG, and each skill's PTM at ω = |D|/|G| and CFT, by store label; only the
    models with probe samples (none: an empty dict)."""
    labels = [PRE, REFERENCE] + [label for skill in demo.data.skills for _, label in compared_labels(demo, skill)]
    out, openings = {}, general_openings(demo)
    for label in dict.fromkeys(labels):
        samples = probe_samples(demo.run.store, label)
        if samples:
            out[label] = summarise_probe(samples, openings)
    return out


@dataclass(frozen=True)
class Prompt:
    """One prompt of the side by side: what it stands for, its set, whose models reply, θG's sample of it."""

    title: str
    set_name: str
    skill: str
    sample: dict


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (whitespace runs as one space), cut to ``limit`` characters with "…"."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def prompt_text(sample: dict) -> str:
    """The user's request of a sample: its prompt string, or the last user message of its chat."""
    prompt = sample.get("prompt")
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return "" if prompt is None else str(prompt)


def _first(samples: Sequence[dict], kind: str | None) -> dict | None:
    """The first item in file order, of the probe kind ``kind`` (the family's last part) when given."""
    chosen = [s for s in samples if kind is None or str(s.get("family") or "").rsplit("/", 1)[-1] == kind]
    return min(chosen, key=lambda s: s.get("index", 0)) if chosen else None


def side_by_side_prompts(demo) -> list[Prompt]:
    """The three prompts (see the module docstring), each from the first of its sources that was scored."""
    skills = demo.data.skills
    probe_skill = "safety" if "safety" in skills else next(iter(skills), None)
    safety = skills.get("safety")
    wanted = [("A harmful request", [(PROBE_HARMFUL, "harmful", probe_skill),
                                     (safety and safety.held_out, None, "safety")]),
              ("A lookalike (safe, but looks unsafe)", [(PROBE, "lookalike", probe_skill),
                                                       (safety and safety.lookalike_unseen, None, "safety")]),
              ("A science item", [("science" in skills and skills["science"].in_form, None, "science")])]
    out = []
    for title, sources in wanted:
        for set_name, kind, skill in sources:
            if not set_name or skill is None:
                continue
            first = _first(item_samples(demo.run.store, REFERENCE, set_name) or [], kind)
            if first is not None:
                out.append(Prompt(title, set_name, skill, first))
                break
    return out


def reply(store, label: str, set_name: str, item: dict) -> str | None:
    """``label``'s reply to ``item`` (matched by id, else by position), on one line and cut; None without one."""
    for s in item_samples(store, label, set_name) or []:
        same = s.get("id") == item.get("id") if item.get("id") is not None else s.get("index") == item.get("index")
        if same and "output" in s:
            text = one_line(s["output"] or "", REPLY_CHARS)
            return f'"{text}"' if text else "(empty)"
    return None


def side_by_side(demo) -> list[str]:
    """summary.md's "Side by side" section as lines (a blank line first), or none when no prompt was scored."""
    prompts = side_by_side_prompts(demo)
    if not prompts:
        return []
    md = ["", "## Side by side", "",
          f"Real prompts and what each model replied (greedy; replies on one line, cut to {REPLY_CHARS} characters)."]
    for p in prompts:
        kind = str(p.sample.get("family") or "").rsplit("/", 1)[-1] if p.set_name in (PROBE, PROBE_HARMFUL) else None
        md += ["", f"**{p.title}** ({p.set_name}{', ' + kind if kind else ''}): "
                   f'"{one_line(prompt_text(p.sample), PROMPT_CHARS)}"']
        for name, label in compared_labels(demo, p.skill):
            said = reply(demo.run.store, label, p.set_name, p.sample)
            if said is not None:
                md.append(f"- {name}: {said}")
    return md
