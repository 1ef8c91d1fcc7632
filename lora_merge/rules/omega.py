"""ω rules: how strongly each skill is folded in.

The paper's heuristic when no validation data exists is ω = |D| / |G| for task
arithmetic (θ = θG + ω·τD), and ω = |D| / (|D| + |G|) for the interpolation
variants (linear_interp, wise_ft). Sizes are training instances, not tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.model_record import MODEL_RECORD as GENERAL_MANIFEST  # the model record beside a model

PAPER_GRID = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class Weight:
    """An ω with the rule and formula that produced it (recorded on the model card)."""

    value: float
    rule: str  # explicit | size_ratio | size_fraction | recommended (a sweep's ω from skill.json)
    formula: str


OMEGA_LIMIT = 10.0  # |ω| above this is a mistake, not a merge: every rule's ω is held to it (check_weight)


def size_ratio(d: int, g: int) -> float:
    """ω = |D| / |G| (task arithmetic)."""
    return d / g


def size_fraction(d: int, g: int) -> float:
    """ω = |D| / (|D| + |G|) (linear interpolation, WiSE-FT)."""
    return d / (d + g)


def check_weight(value: float, what: str, sizes: str = "") -> float:
    """The one bound on ω, whichever rule chose it: finite and within ±OMEGA_LIMIT.

    ``sizes`` names |D| and |G| when the size rule produced the value, so the error says which to fix.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value \
            or not -OMEGA_LIMIT <= value <= OMEGA_LIMIT:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        fix = f" ({sizes}: check both sizes, or pass --weights)" if sizes else ""
        raise LoraMergeError(f"{what}: ω = {shown} is outside the sane range [{-OMEGA_LIMIT:g}, {OMEGA_LIMIT:g}]{fix}")
    return float(value)


# How far (either way) a pack's recommended ω may lie from |D|/|G| before the fold says so. A sweep can rightly
# find its best ω tens of times |D|/|G| when |D| is small against |G|, so the heuristic is only a loose anchor;
# a hundredfold is past any tuning of it: a recommendation from another |G|, or an edit (skill.json is not hashed).
RECOMMENDED_FACTOR = 100.0


def recommended_warning(name: str, value: float, d: int | None, g: int | None) -> str | None:
    """A warning naming the pack when its recommended ω is 0 or more than :data:`RECOMMENDED_FACTOR` times away
    from |D|/|G| either way; None when it is not, or when |D| or |G| is unknown. (A negative or out-of-range ω
    never gets here: the manifest refuses it when it is read, ``pack.skillpack.RecommendedWeight``.)"""
    if value == 0:
        return (f"pack {name!r} recommends ω = 0 (its sweep found no ω better than θG by its rule): folding it "
                "changes nothing; pass --weights or --rule size to fold it anyway")
    if type(d) is not int or type(g) is not int or d <= 0 or g <= 0:
        return None
    try:
        ratio = d / g
    except OverflowError:  # |D|/|G| beyond any float: the size rule refuses it wherever it is used
        return None
    if value <= RECOMMENDED_FACTOR * ratio and value * RECOMMENDED_FACTOR >= ratio:
        return None
    return (f"pack {name!r} recommends ω = {value:g}, {value / ratio:.3g}× its |D|/|G| = {_show(d)}/{_show(g)} = "
            f"{ratio:.3g} (more than {RECOMMENDED_FACTOR:g}× away): skill.json is not hashed, so check where the "
            "recommendation came from (`pack inspect`), or pass --weights or --rule size")


def _show(n: int) -> str:
    """An instance count for a message: in full, or as 1.000e+400 when it is absurdly long."""
    digits = str(n)
    return digits if len(digits) <= 24 else f"{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


def _size(value: object, what: str) -> int:
    if type(value) is not int or value <= 0:  # bool is an int subclass: refused too
        shown = _show(value) if type(value) is int else repr(value)[:40]
        raise LoraMergeError(f"{what} must be a positive whole number of training instances, not {shown}")
    return value


def size_weight(name: str, d: object, g: object, rule: str) -> Weight:
    """ω from |D| and |G| by ``rule``, checked before dividing (10**400 / 1000 is no float)."""
    d = _size(d, f"pack {name!r}: |D| (data.instances in its skill.json)")
    g = _size(g, "|G| (--general-size, or data.instances in the general model's lora_merge.json)")
    ds, gs = _show(d), _show(g)
    sizes = f"|D| = {ds} for pack {name!r}, |G| = {gs}"
    if rule == "size_fraction":  # always in (0, 1)
        return Weight(size_fraction(d, g), rule, f"ω = |D|/(|D|+|G|) = {ds}/({ds}+{gs})")
    if d > OMEGA_LIMIT * g:  # exact integer comparison: no overflow, no rounding
        raise LoraMergeError(f"pack {name!r}: ω = |D|/|G| = {ds}/{gs} is above the sane limit of {OMEGA_LIMIT:g} "
                             f"({sizes}: check both sizes, or pass --weights)")
    w = size_ratio(d, g)
    return Weight(check_weight(w, f"pack {name!r}", sizes), "size_ratio", f"ω = |D|/|G| = {ds}/{gs}")


def check_weights(values: Sequence[float], count: int, what: str = "--weights", *, bounded: bool = False) -> list[float]:
    """The one check of a list of explicit ω: exactly one per pack, in order (never silently cut), each finite.

    ``bounded`` (ω a user wrote: --weights, a merge recipe) also holds each to :func:`check_weight`'s bound; a
    library caller may go past it on purpose (the overflow tests do), but never to NaN or Inf.
    """
    if len(values) != count:
        raise LoraMergeError(f"{what} gives {len(values)} value(s) for {count} packs; give one per pack, in order")
    if bounded:
        return [check_weight(v, what) for v in values]
    for v in values:
        if not math.isfinite(v):
            raise LoraMergeError(f"{what}: ω = {v} is not a finite number")
    return [float(v) for v in values]


def parse_weights(text: str, count: int) -> list[float]:
    """'0.24,0.57' → [0.24, 0.57], one per pack; a single value applies to all packs."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LoraMergeError(f"--weights {text!r}: write numbers separated by commas, like 0.24,0.57") from None
    if len(values) == 1 and count > 1:
        values = values * count
    return check_weights(values, count, "--weights", bounded=True)


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
    if n is not None and (type(n) is not int or n <= 0):  # true is not a size
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
        return [Weight(w, "explicit", f"ω = {w:g} (given)") for w in check_weights(explicit, len(names))]
    if general_size is None:
        raise LoraMergeError(
            "ω is not given and |G| is unknown: pass --weights (one ω per pack), or --general-size N "
            "(instances the general model was tuned on) so that ω = |D|/|G| can be used"
        )
    out = []
    for name, d in zip(names, instances, strict=True):
        if d is None:
            raise LoraMergeError(
                f"pack {name!r} does not record its training size |D| (a plain PEFT adapter?): "
                "pass --weights to give ω explicitly"
            )
        out.append(size_weight(name, d, general_size, rule))
    return out
