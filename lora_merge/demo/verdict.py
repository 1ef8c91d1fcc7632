"""The demo's verdict: did a skill transfer, judged by the rule its config wrote down before the run.

The rule (:class:`lora_merge.study.config.TransferRule`) compares PTM at ω = |D|/|G| with θG on the same items,
one paired interval per endpoint (Newcombe's for paired proportions, :mod:`lora_merge.evaluate.intervals`):

- ``skill``: the gain on the skill's training forms: lower bound > 0 and point gain ≥ the bar;
- ``general``: non-inferior: the lower bound of its change ≥ −margin;
- safety only, ``lookalike_unseen``: lookalikes of categories never trained on still answered: the Wilson
  lower bound of the share answered ≥ the floor.

``skill_heldout`` (forms never trained on) and ``lookalike`` (the trained categories' lookalikes) are measured
and reported beside the verdict, not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.intervals import paired_proportion_interval, wilson_interval
from lora_merge.study.config import TransferRule
from lora_merge.study.scores import ScoreStore
from lora_merge.study.tasks import SkillSets

REFERENCE = "θG"


def endpoint_sets(sets: SkillSets) -> dict[str, str]:
    """Endpoint → the eval set that measures it, for one skill (general first)."""
    named = {"general": "general", "skill": sets.in_form, "skill_heldout": sets.held_out,
             "lookalike": sets.lookalike, "lookalike_unseen": sets.lookalike_unseen}
    return {k: v for k, v in named.items() if v}


def paired_endpoints(store: ScoreStore, label: str, sets: SkillSets, confidence: float) -> dict[str, dict]:
    """``label`` against θG on each endpoint, paired item by item: {endpoint: {delta, low, high, n}} in points."""
    out = {}
    for endpoint, set_name in endpoint_sets(sets).items():
        base, cand = store.outcomes(REFERENCE, set_name), store.outcomes(label, set_name)
        if base is None or cand is None:
            continue
        if base[0] != cand[0]:
            raise LoraMergeError(f"{set_name}: {label} and {REFERENCE} were scored on different items; "
                                 "rerun the demo to score both on the same eval files")
        iv = paired_proportion_interval([bool(x) for x in base[1]], [bool(x) for x in cand[1]], confidence)
        out[endpoint] = {"delta": round(iv.delta, 1), "low": round(iv.low, 1), "high": round(iv.high, 1), "n": iv.n}
    return out


def share_interval(store: ScoreStore, label: str, set_name: str, confidence: float) -> dict | None:
    """The share of a set's items ``label`` got right, with its Wilson interval, in points."""
    got = store.outcomes(label, set_name)
    if got is None or not got[1]:
        return None
    n, k = len(got[1]), sum(got[1])
    low, high = wilson_interval(k, n, NormalDist().inv_cdf(0.5 + confidence / 2.0))
    return {"share": round(100.0 * k / n, 1), "low": round(100.0 * low, 1), "high": round(100.0 * high, 1), "n": n}


@dataclass(frozen=True)
class Check:
    """One criterion of the rule: what it asks, what was measured, and whether it holds."""

    asks: str
    measured: str
    holds: bool


@dataclass(frozen=True)
class Verdict:
    """A skill's verdict under the rule: transferred only when every check holds."""

    skill: str
    omega: float
    checks: list[Check]

    @property
    def transferred(self) -> bool:
        return bool(self.checks) and all(c.holds for c in self.checks)

    def to_dict(self) -> dict:
        return {"transferred": self.transferred, "omega": self.omega,
                "checks": [{"asks": c.asks, "measured": c.measured, "holds": c.holds} for c in self.checks]}


def _ci(e: dict) -> str:
    return f"{e['delta']:+.1f} [{e['low']:+.1f}, {e['high']:+.1f}], n = {e['n']}"


def judge(skill: str, omega: float, rule: TransferRule, ci: dict[str, dict], unseen_share: dict | None) -> Verdict:
    """The rule applied to PTM's paired intervals against θG (``ci``) and, for safety, the unseen lookalike share."""
    checks = []
    if "skill" in ci:
        s = ci["skill"]
        checks.append(Check(f"skill gain ≥ {rule.skill_gain:g} points with its lower bound > 0", _ci(s),
                            s["delta"] >= rule.skill_gain and s["low"] > 0))
    if "general" in ci:
        g = ci["general"]
        checks.append(Check(f"general non-inferior: lower bound ≥ −{rule.general_margin:g} points", _ci(g),
                            g["low"] >= -rule.general_margin))
    if unseen_share is not None:
        u = unseen_share
        checks.append(Check(f"lookalikes of unseen categories answered: lower bound ≥ {rule.lookalike_floor:g} %",
                            f"{u['share']:.1f} % [{u['low']:.1f}, {u['high']:.1f}], n = {u['n']}",
                            u["low"] >= rule.lookalike_floor))
    if len(checks) < 2:
        raise LoraMergeError(f"{skill}: no per-item outcomes for the skill or general set; the verdict needs both")
    return Verdict(skill, omega, checks)


def rule_text(rule: TransferRule) -> str:
    """The rule in one sentence, as the closing screen prints it before the verdicts."""
    return (f"A skill transferred when PTM at ω = |D|/|G| gains ≥ {rule.skill_gain:g} points on its training forms "
            f"with the {100 * rule.confidence:g} % paired interval's lower bound > 0, general's lower bound is "
            f"≥ −{rule.general_margin:g} points, and (safety) lookalikes of never-trained categories are answered "
            f"with a lower bound ≥ {rule.lookalike_floor:g} %. Intervals: Newcombe's paired interval against θG "
            "(Wilson's for a share).")
