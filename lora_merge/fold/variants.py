"""The paper's interpolation variants: the model differences they fold, as lazy task vectors.

- ``linear_interp``: θ = θpre + ω·τD + (1 − ω)·τG with τG = θG − θpre. It is
  folded as θG + ω·τD − ω·(θG − θpre), so only θG, θpre and the pack are read,
  one tensor at a time. With several packs: θ = θpre + Σ ωk·τk + (1 − Σ ωk)·τG.
- ``wise_ft``: θ = θG + ω·(θCFT − θG), from a model θCFT that continued
  finetuning θG on D (WiSE-FT); it needs no θpre.

Both use the size rule ω = |D| / (|D| + |G|) when ω is not given (task
arithmetic keeps ω = |D| / |G|). Model differences are lazy
:class:`ModelDifferenceDelta` terms, so neither variant holds a model in memory.
:func:`lora_merge.fold.plan.plan_fold` builds each variant's terms from these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from lora_merge.core.errors import LoraMergeError
from lora_merge.io.tensors import DTYPES, WeightSet
from lora_merge.pack.task_vector import Delta, TargetModel, TaskVector

LINEAR_INTERP_FORMULA = "θ = θpre + ω·τD + (1 − ω)·τG, τG = θG − θpre (folded as θG + ω·τD − ω·(θG − θpre))"
WISE_FT_FORMULA = "θ = θG + ω·(θCFT − θG)"


@dataclass(frozen=True)
class ModelDifferenceDelta(Delta):
    """One tensor of the difference of two models, minuend[key_a] − subtrahend[key_b], read lazily."""

    minuend: WeightSet
    key_a: str
    subtrahend: WeightSet
    key_b: str
    shape: tuple[int, ...]

    def materialize(self, device: str | torch.device = "cpu") -> torch.Tensor:
        a = self.minuend.get(self.key_a).to(device=device, dtype=torch.float32)
        return a - self.subtrahend.get(self.key_b).to(device=device, dtype=torch.float32)


def _stored_name(ws: WeightSet, name: str, target: TargetModel) -> str | None:
    """Where ``ws`` keeps the tensor the target calls ``name`` (a tied head reads the input embedding)."""
    if name in ws:
        return name
    source = target.virtual.get(name)
    return source if source is not None and source in ws else None


def model_difference(
    label: str,
    minuend: WeightSet,
    subtrahend: WeightSet,
    target: TargetModel,
    names: Iterable[str],
    roles: tuple[str, str],
) -> TaskVector:
    """minuend − subtrahend over the target's ``names`` (floating tensors only), every name and shape checked."""
    tv = TaskVector(label)
    for name in names:
        key_a, key_b = _stored_name(minuend, name, target), _stored_name(subtrahend, name, target)
        missing = [role for role, key in zip(roles, (key_a, key_b), strict=True) if key is None]
        if missing:
            raise LoraMergeError(f"{label}: weight {name!r} is missing from {' and '.join(missing)}; "
                                 f"{roles[0]} and {roles[1]} must be the same architecture")
        info_a, info_b = minuend.info(key_a), subtrahend.info(key_b)
        if tuple(info_a.shape) != tuple(info_b.shape) or tuple(info_a.shape) != tuple(target.shapes[name]):
            raise LoraMergeError(f"{label}: weight {name!r} is {tuple(info_a.shape)} in {roles[0]} but "
                                 f"{tuple(info_b.shape)} in {roles[1]}; they must be models of the same size")
        if not DTYPES[info_a.dtype].is_floating_point:
            continue  # integer buffers are not weights that move
        tv.terms[name] = [(1.0, ModelDifferenceDelta(minuend, key_a, subtrahend, key_b, tuple(info_a.shape)))]
    return tv
