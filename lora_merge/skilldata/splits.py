"""Normalised prompt text, disjointness of eval prompts from training, and a stratified split.

Two prompts are "the same" when they agree after lower-casing, straightening quotes, stripping punctuation
and collapsing whitespace (so "How do I kill a Python process?" and "how do i kill a python  process" are
one prompt). Only the user turns count: a system prompt is shared by every row and says nothing about overlap.
"""

from __future__ import annotations

import random
import re
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

from lora_merge.evaluate.refusal import normalize

T = TypeVar("T")
_PUNCT = re.compile(r"[^\w\s]")


def normalise_text(text: str) -> str:
    """Lower case, straight quotes, punctuation stripped, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", normalize(text)).split())


def prompt_text(row: dict) -> str:
    """The user-side text of a training row (``prompt``) or an eval row (``messages``/``prompt``/``text``)."""
    value = row.get("messages", row.get("prompt", row.get("text", "")))
    if isinstance(value, list):  # chat turns: every user turn; an assistant turn ends a training chat
        return "\n".join(m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user")
    return value if isinstance(value, str) else ""


def prompt_keys(rows: Iterable[dict]) -> set[str]:
    """The normalised prompts of some rows."""
    return {normalise_text(prompt_text(r)) for r in rows}


def overlap(train: Iterable[dict], evals: Iterable[dict]) -> list[str]:
    """Eval prompts (their original text, in order) whose normalised form is also a training prompt."""
    seen = prompt_keys(train)
    return [prompt_text(r) for r in evals if normalise_text(prompt_text(r)) in seen]


def stratified_split(items: Sequence[T], key: callable, n_first: int, rng: random.Random) -> tuple[list[T], list[T]]:
    """Split ``items`` into ``n_first`` and the rest, each stratum contributing in proportion to its size.

    Quotas are floors of the proportional share, the leftover going to the strata with the largest remainders
    (ties by stratum name), so the split is deterministic for a given ``rng`` state.
    """
    groups: dict[Hashable, list[T]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    total = len(items)
    shares = {g: n_first * len(v) / total for g, v in groups.items()} if total else {}
    quota = {g: int(s) for g, s in shares.items()}
    for g in sorted(groups, key=lambda g: (-(shares[g] - quota[g]), str(g)))[: n_first - sum(quota.values())]:
        quota[g] += 1
    first, rest = [], []
    for g in sorted(groups, key=str):
        members = list(groups[g])
        rng.shuffle(members)
        first += members[: quota[g]]
        rest += members[quota[g]:]
    return first, rest
