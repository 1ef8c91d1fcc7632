"""Finite-value checks: a pack with NaN/Inf is refused, a fold that overflows its dtype says where.

Both checks are one reduction per tensor (``torch.aminmax``: no copy, NaN
propagates, ±Inf shows up as the min or max), so they cost far less than the
arithmetic of the fold itself. Only when a check fails do we count the bad
values for the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lora_merge.core.errors import LoraMergeError
from lora_merge.io.tensors import SafetensorsFile

if TYPE_CHECKING:  # the checks of tensors import torch where they run; scan_file reads bits with numpy
    import torch

# IEEE float layouts as safetensors names them: (unsigned view, exponent mask, mantissa mask, sign shift).
# A value is NaN or ±Inf exactly when its exponent bits are all ones; the mantissa tells NaN from Inf.
_FLOAT_BITS = {
    "F64": ("<u8", 0x7FF0000000000000, 0x000FFFFFFFFFFFFF, 63),
    "F32": ("<u4", 0x7F800000, 0x007FFFFF, 31),
    "F16": ("<u2", 0x7C00, 0x03FF, 15),
    "BF16": ("<u2", 0x7F80, 0x007F, 15),
}
_SCAN_CHUNK = 1 << 22  # elements per step: bounded temporaries however large the tensor


def all_finite(t: torch.Tensor) -> bool:
    """True when every value of ``t`` is finite (integer and empty tensors always are)."""
    import torch

    if not t.is_floating_point() or t.numel() == 0:
        return True
    # A NaN or ±Inf anywhere makes the sum NaN or ±Inf, and a sum is the cheaper pass (docs/benchmarks.md,
    # "Profiled first: where a fold's time goes": sum against aminmax per element); a finite tensor whose sum
    # overflows is only a false alarm, settled by the exact test below.
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
        import torch

        return cls(int(torch.isnan(t).sum()), int(torch.isposinf(t).sum()), int(torch.isneginf(t).sum()))

    def describe(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.nan, "NaN"), (self.pos_inf, "+Inf"), (self.neg_inf, "-Inf")) if n]
        return ", ".join(parts) or "no bad values"


def non_finite_error(pack_name: str, file: str, key: str, t: torch.Tensor) -> LoraMergeError:
    return LoraMergeError(
        f"pack {pack_name!r}: tensor {key!r} in {file} holds {BadValues.count(t).describe()}; the pack is broken "
        "(training diverged, or the file is damaged). Retrain or re-fetch it; it cannot be folded."
    )


def bad_bits(src: SafetensorsFile, key: str) -> BadValues | None:
    """NaN/±Inf counts of one stored tensor read as raw bits (numpy, no torch); None when every value is finite."""
    import numpy as np

    info = src.tensors[key]
    if info.dtype not in _FLOAT_BITS or info.numel == 0:
        return None  # integers and empty tensors are always finite
    view, exp, mant, sign = _FLOAT_BITS[info.dtype]
    x = np.frombuffer(src.mapped(), dtype=view, count=info.numel, offset=info.start)
    nan = pos = neg = 0
    for i in range(0, info.numel, _SCAN_CHUNK):
        part = x[i:i + _SCAN_CHUNK]
        special = part[(part & view_of(exp, view)) == view_of(exp, view)]
        if special.size:
            is_nan = (special & view_of(mant, view)) != 0
            negative = (special >> view_of(sign, view)) != 0
            nan += int(is_nan.sum())
            neg += int((~is_nan & negative).sum())
            pos += int((~is_nan & ~negative).sum())
    return BadValues(nan, pos, neg) if nan + pos + neg else None


def view_of(value: int, view: str):
    """A mask as a numpy scalar of the view's type (so & and >> stay unsigned)."""
    import numpy as np

    return np.dtype(view).type(value)


def scan_file(path, pack_name: str) -> Iterator[tuple[str, str]]:
    """Every tensor of a safetensors file that holds NaN/Inf: (tensor name, what is wrong). Reads bits, not
    tensors, so `pack verify / export / import` never import torch."""
    src = SafetensorsFile(path)
    for key in src.keys():
        bad = bad_bits(src, key)
        if bad is not None:
            yield key, bad.describe()
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
    import torch

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
