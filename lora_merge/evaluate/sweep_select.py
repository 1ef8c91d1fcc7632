"""Choosing ω from a sweep: the selection rules behind `cli.py sweep --select`.

Scores are on the 0–100 scale of :mod:`lora_merge.evaluate.report`. Rules:

* ``general-noninferior:X`` (default, X = 5): the best skill score among the points whose general ability
  is shown non-inferior to θG's: the lower bound of the 95 % paired interval of (point − θG) on the general
  group is at least −X points (:mod:`lora_merge.evaluate.paired`, on the items both scored). θG itself (ω = 0)
  always qualifies, so there is always an answer; a point without per-item outcomes never does. This is the
  one rule `--write-recommendation` stores: a point score of a few dozen items cannot show general ability
  was kept, its interval can.
* ``general-within:X``: the best skill score among the points whose general *point* score is at least
  θG's minus X points (the rule before intervals; still offered to explore a sweep, never stored).
* ``best-skill``: the best skill score, whatever it costs the general score.
* ``best-general``: the best general score.
* ``best-mean``: the best mean of the general and skill scores.

Ties go to the smaller total ω (the smaller change to θG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lora_merge.core.errors import LoraMergeError

NONINFERIOR = "general-noninferior"
DEFAULT_TOLERANCE = 5.0  # points: the margin the demo's rule states for general ability (issue 32)
DEFAULT_RULE = f"{NONINFERIOR}:{DEFAULT_TOLERANCE:g}"
RULES = (f"{NONINFERIOR}:X", "general-within:X", "best-skill", "best-general", "best-mean")
_TOLERANT = (NONINFERIOR, "general-within")


@dataclass(frozen=True)
class Rule:
    kind: str
    tolerance: float = 1.0

    @property
    def stores(self) -> bool:
        """Whether `--write-recommendation` may store what this rule picks (only the interval rule)."""
        return self.kind == NONINFERIOR

    @property
    def text(self) -> str:
        if self.kind == NONINFERIOR:
            return (f"{NONINFERIOR}:{self.tolerance:g} (best skill score among the points whose general score's "
                    f"95 % paired interval against θG has its lower bound ≥ −{self.tolerance:g} points, 0–100 scale)")
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
    general_low: float | None = None  # lower bound of the 95 % paired interval of general − θG's; None: unknown


def parse_rule(text: str) -> Rule:
    text = (text or DEFAULT_RULE).strip()
    kind, _, arg = text.partition(":")
    if kind in _TOLERANT:
        try:
            tol = float(arg) if arg else (DEFAULT_TOLERANCE if kind == NONINFERIOR else 1.0)
        except ValueError:
            raise LoraMergeError(f"--select {text!r}: the tolerance must be a number of points, e.g. {kind}:5") from None
        if not 0 <= tol <= 100:
            raise LoraMergeError(f"--select {text!r}: the tolerance is in points on the 0–100 scale, 0 to 100")
        return Rule(kind, tol)
    if kind in ("best-skill", "best-general", "best-mean") and not arg:
        return Rule(kind)
    raise LoraMergeError(f"--select {text!r}: unknown rule; use one of {', '.join(RULES)}")


def select(rule: Rule, reference: Candidate, points: Sequence[Candidate]) -> Candidate:
    """The point the rule picks; ``reference`` is θG (it is among ``points`` or added to them)."""
    pool = list(points) if any(p is reference for p in points) else [reference, *points]
    if rule.kind == NONINFERIOR:
        pool = [p for p in pool if p is reference
                or (p.general_low is not None and p.general_low >= -rule.tolerance - 1e-9)]
        key = lambda p: (p.skill, -p.total_weight)  # noqa: E731
    elif rule.kind == "general-within":
        pool = [p for p in pool if p.general >= reference.general - rule.tolerance - 1e-9]
        key = lambda p: (p.skill, -p.total_weight)  # noqa: E731
    elif rule.kind == "best-skill":
        key = lambda p: (p.skill, -p.total_weight)  # noqa: E731
    elif rule.kind == "best-general":
        key = lambda p: (p.general, -p.total_weight)  # noqa: E731
    else:
        key = lambda p: ((p.general + p.skill) / 2, -p.total_weight)  # noqa: E731
    return max(pool, key=key)
