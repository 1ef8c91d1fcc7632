"""Choosing ω from a sweep: the selection rules behind `cli.py sweep --select`.

Scores are on the 0–100 scale of :mod:`lora_merge.evaluate.report`. Rules:

* ``general-within:X`` (default, X = 1): the best skill score among the points whose general score is
  at least θG's minus X points. θG itself (ω = 0) always qualifies, so there is always an answer.
* ``best-skill``: the best skill score, whatever it costs the general score.
* ``best-general``: the best general score.
* ``best-mean``: the best mean of the general and skill scores.

Ties go to the smaller total ω (the smaller change to θG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lora_merge.core.errors import LoraMergeError

DEFAULT_RULE = "general-within:1"
RULES = ("general-within:X", "best-skill", "best-general", "best-mean")


@dataclass(frozen=True)
class Rule:
    kind: str
    tolerance: float = 1.0

    @property
    def text(self) -> str:
        if self.kind == "general-within":
            return f"general-within:{self.tolerance:g} (best skill score with the general score within " \
                   f"{self.tolerance:g} point(s) of θG, 0–100 scale)"
        return {"best-skill": "best-skill (highest skill score)", "best-general": "best-general (highest general score)",
                "best-mean": "best-mean (highest mean of general and skill scores)"}[self.kind]


@dataclass(frozen=True)
class Candidate:
    """What a rule needs to know about one sweep point."""

    label: str
    total_weight: float
    general: float
    skill: float


def parse_rule(text: str) -> Rule:
    text = (text or DEFAULT_RULE).strip()
    kind, _, arg = text.partition(":")
    if kind == "general-within":
        try:
            tol = float(arg) if arg else 1.0
        except ValueError:
            raise LoraMergeError(f"--select {text!r}: the tolerance must be a number of points, e.g. general-within:1") from None
        if not 0 <= tol <= 100:
            raise LoraMergeError(f"--select {text!r}: the tolerance is in points on the 0–100 scale, 0 to 100")
        return Rule(kind, tol)
    if kind in ("best-skill", "best-general", "best-mean") and not arg:
        return Rule(kind)
    raise LoraMergeError(f"--select {text!r}: unknown rule; use one of {', '.join(RULES)}")


def select(rule: Rule, reference: Candidate, points: Sequence[Candidate]) -> Candidate:
    """The point the rule picks; ``reference`` is θG (it is among ``points`` or added to them)."""
    pool = list(points) if any(p is reference for p in points) else [reference, *points]
    if rule.kind == "general-within":
        pool = [p for p in pool if p.general >= reference.general - rule.tolerance - 1e-9]
        key = lambda p: (p.skill, -p.total_weight)  # noqa: E731
    elif rule.kind == "best-skill":
        key = lambda p: (p.skill, -p.total_weight)  # noqa: E731
    elif rule.kind == "best-general":
        key = lambda p: (p.general, -p.total_weight)  # noqa: E731
    else:
        key = lambda p: ((p.general + p.skill) / 2, -p.total_weight)  # noqa: E731
    return max(pool, key=key)
