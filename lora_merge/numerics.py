"""Finite-value checks: a pack with NaN/Inf is refused, a fold that overflows its dtype says where.

Both checks are one reduction per tensor (``torch.aminmax``: no copy, NaN
propagates, ±Inf shows up as the min or max), so they cost far less than the
arithmetic of the fold itself. Only when a check fails do we count the bad
values for the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lora_merge.errors import LoraMergeError
from lora_merge.tensors import SafetensorsFile


def all_finite(t: torch.Tensor) -> bool:
    """True when every value of ``t`` is finite (integer and empty tensors always are)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    # A NaN or ±Inf anywhere makes the sum NaN or ±Inf, and a sum is twice as fast as aminmax; a finite
    # tensor whose sum overflows is only a false alarm, settled by the exact test below.
    if bool(torch.isfinite(t.sum())):
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


@dataclass(frozen=True)
class BadValues:
    """How many values of one tensor are NaN, +Inf or -Inf."""

    nan: int
    pos_inf: int
    neg_inf: int

    @classmethod
    def count(cls, t: torch.Tensor) -> "BadValues":
        return cls(int(torch.isnan(t).sum()), int(torch.isposinf(t).sum()), int(torch.isneginf(t).sum()))

    def describe(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.nan, "NaN"), (self.pos_inf, "+Inf"), (self.neg_inf, "-Inf")) if n]
        return ", ".join(parts) or "no bad values"


def non_finite_error(pack_name: str, file: str, key: str, t: torch.Tensor) -> LoraMergeError:
    return LoraMergeError(
        f"pack {pack_name!r}: tensor {key!r} in {file} holds {BadValues.count(t).describe()}; the pack is broken "
        "(training diverged, or the file is damaged). Retrain or re-fetch it; it cannot be folded."
    )


def scan_file(path, pack_name: str) -> Iterator[tuple[str, str]]:
    """Every tensor of a safetensors file that holds NaN/Inf: (tensor name, what is wrong)."""
    src = SafetensorsFile(path)
    for key in src.keys():
        t = src.get(key)
        if not all_finite(t):
            yield key, BadValues.count(t).describe()
    src.close()


def require_finite_folder(folder, what: str) -> None:
    """Refuse a freshly written folder whose safetensors hold NaN/Inf (e.g. a diverged training run)."""
    from pathlib import Path

    for f in sorted(Path(folder).rglob("*.safetensors")):
        bad = list(scan_file(f, what))
        if bad:
            listed = "; ".join(f"{k}: {d}" for k, d in bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
            raise LoraMergeError(f"{what} holds non-finite weights ({listed}, in {f.name}); nothing was published. "
                                 "Training diverged: check lr, weight_decay and precision in the recipe")


def guard_pack_reads(tv, pack_name: str):
    """Make every pack tensor the task vector ``tv`` reads be checked for NaN/Inf, once, on its first read.

    The check wraps ``get`` of the pack's :class:`SafetensorsFile` objects that
    ``tv``'s deltas read from (the base model a ReplacementDelta subtracts is
    not a pack and is left alone). Returns ``tv`` for chaining.
    """
    for terms in tv.terms.values():
        for _coef, delta in terms:
            source = getattr(delta, "source", None)
            if isinstance(source, SafetensorsFile) and "get" not in vars(source):
                source.get = _checked_getter(source, pack_name)
    return tv


def _checked_getter(source: SafetensorsFile, pack_name: str):
    plain_get = type(source).get.__get__(source)
    checked: set[str] = set()

    def get(name: str) -> torch.Tensor:
        t = plain_get(name)
        if name not in checked:
            if not all_finite(t):
                raise non_finite_error(pack_name, source.path.name, name, t)
            checked.add(name)
        return t

    return get


def check_folded(name: str, result: torch.Tensor, source: torch.Tensor | None = None) -> None:
    """Refuse a folded tensor that is not finite in its output dtype, naming it.

    ``source`` is the general model's tensor the result came from: when the fold
    returned it unchanged (same object: nothing touched it, no cast) there is
    nothing new to check.
    """
    if result is source or all_finite(result):
        return
    bad = BadValues.count(result)
    limit = torch.finfo(result.dtype).max
    if bad.nan:
        cause = "the general model's tensor or a pack's delta holds NaN, or +Inf and -Inf met"
    else:
        cause = f"values grew beyond {result.dtype}'s largest finite value ±{limit:.4g}"
    raise LoraMergeError(
        f"tensor {name!r}: the folded result holds {bad.describe()} in {result.dtype} ({cause}). Fold into a wider "
        "dtype (--dtype float32 or bfloat16), or use a smaller ω. Nothing was written."
    )
