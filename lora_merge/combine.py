"""Merge rules: small pure functions that combine the ω-scaled deltas of one tensor.

Each rule takes the list of already-scaled float32 deltas that touch one
weight (one per pack) and returns their combined delta; the fold adds it to
θG's tensor. Rules are registered by name in :data:`RULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lora_merge.errors import LoraMergeError


@dataclass(frozen=True)
class RuleOptions:
    """Settings shared by the rules (unused ones are ignored by a rule)."""

    density: float = 1.0
    seed: int = 0


Rule = Callable[[Sequence[torch.Tensor], RuleOptions, str], torch.Tensor]


def linear(deltas: Sequence[torch.Tensor], opts: RuleOptions, name: str = "") -> torch.Tensor:
    """Task arithmetic: Σk ωk·τk (deltas arrive already scaled by ω)."""
    out = deltas[0] if len(deltas) == 1 else torch.stack(list(deltas)).sum(0)
    return out


RULES: dict[str, Rule] = {"linear": linear}


def get_rule(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise LoraMergeError(f"unknown merge method {name!r}; choose one of: {', '.join(sorted(RULES))}") from None
