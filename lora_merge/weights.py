"""ω rules: how strongly each skill is folded in.

The paper's heuristic when no validation data exists is ω = |D| / |G| for task
arithmetic (θ = θG + ω·τD), and ω = |D| / (|D| + |G|) for the interpolation
variants (linear_interp, wise_ft). Sizes are training instances, not tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_merge.errors import LoraMergeError
from lora_merge.model_record import MODEL_RECORD as GENERAL_MANIFEST  # the model record beside a model

PAPER_GRID = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class Weight:
    """An ω with the rule and formula that produced it (recorded on the model card)."""

    value: float
    rule: str  # explicit | size_ratio | size_fraction
    formula: str


def size_ratio(d: int, g: int) -> float:
    """ω = |D| / |G| (task arithmetic)."""
    return d / g


def size_fraction(d: int, g: int) -> float:
    """ω = |D| / (|D| + |G|) (linear interpolation, WiSE-FT)."""
    return d / (d + g)


def parse_weights(text: str, count: int) -> list[float]:
    """'0.24,0.57' → [0.24, 0.57], one per pack; a single value applies to all packs."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LoraMergeError(f"--weights {text!r}: write numbers separated by commas, like 0.24,0.57") from None
    if len(values) == 1 and count > 1:
        values = values * count
    if len(values) != count:
        raise LoraMergeError(f"--weights gives {len(values)} values for {count} packs; give one per pack, in order")
    for v in values:
        if not -10.0 <= v <= 10.0 or v != v:
            raise LoraMergeError(f"--weights: {v} is outside the sane range [-10, 10]")
    return values


def parse_grid(text: str) -> list[float]:
    """'0.2,0.4,…' → sorted unique ω values for a sweep."""
    values = parse_weights(text, len([x for x in text.split(",") if x.strip()]))
    return sorted(set(values))


def general_size_from_folder(folder: str | Path) -> int | None:
    """|G| from the manifest lora_merge wrote beside a general model, if any."""
    path = Path(folder) / GENERAL_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        n = data.get("data", {}).get("instances")
    except (ValueError, AttributeError):
        raise LoraMergeError(f"{path}: not a valid lora_merge model manifest") from None
    if n is not None and (not isinstance(n, int) or n <= 0):
        raise LoraMergeError(f"{path}: data.instances must be a positive integer, not {n!r}")
    return n


def choose_weights(
    names: Sequence[str],
    instances: Sequence[int | None],
    explicit: Sequence[float] | None,
    general_size: int | None,
    rule: str = "size_ratio",
) -> list[Weight]:
    """ω per pack: the explicit values, or the size rule from |D| (packs) and |G|."""
    if explicit is not None:
        return [Weight(w, "explicit", f"ω = {w:g} (given)") for w in explicit]
    if general_size is None:
        raise LoraMergeError(
            "ω is not given and |G| is unknown: pass --weights (one ω per pack), or --general-size N "
            "(instances the general model was tuned on) so that ω = |D|/|G| can be used"
        )
    if general_size <= 0:
        raise LoraMergeError(f"--general-size must be a positive number of instances, not {general_size}")
    out = []
    for name, d in zip(names, instances, strict=True):
        if d is None:
            raise LoraMergeError(
                f"pack {name!r} does not record its training size |D| (a plain PEFT adapter?): "
                "pass --weights to give ω explicitly"
            )
        if rule == "size_fraction":
            out.append(Weight(size_fraction(d, general_size), rule, f"ω = |D|/(|D|+|G|) = {d}/({d}+{general_size})"))
        else:
            out.append(Weight(size_ratio(d, general_size), "size_ratio", f"ω = |D|/|G| = {d}/{general_size}"))
    return out
