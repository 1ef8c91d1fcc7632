"""The paper's interpolation variants, built as task vectors and folded by the common streamed core.

- ``linear_interp``: θ = θpre + ω·τD + (1 − ω)·τG with τG = θG − θpre. It is
  folded as θG + ω·τD − ω·(θG − θpre), so only θG, θpre and the pack are read,
  one tensor at a time. With several packs: θ = θpre + Σ ωk·τk + (1 − Σ ωk)·τG.
- ``wise_ft``: θ = θG + ω·(θCFT − θG), from a model θCFT that continued
  finetuning θG on D (WiSE-FT); it needs no θpre.

Both use the size rule ω = |D| / (|D| + |G|) when ω is not given (task
arithmetic keeps ω = |D| / |G|). Model differences are lazy
:class:`ModelDifferenceDelta` terms, so neither variant holds a model in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_merge.errors import LoraMergeError
from lora_merge.fingerprint import read_config
from lora_merge.fold import (
    FoldedPack,
    FoldRequest,
    FoldResult,
    compatibility_warnings,
    fold_vectors,
    load_packs,
    scaled_pack_terms,
)
from lora_merge.task_vector import Delta, TargetModel, TaskVector
from lora_merge.tensors import DTYPES, WeightSet
from lora_merge.weights import Weight, choose_weights, general_size_from_folder

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
        missing = [role for role, key in zip(roles, (key_a, key_b)) if key is None]
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


def fold_linear_interp(req: FoldRequest) -> FoldResult:
    """θ = θpre + Σ ωk·τk + (1 − Σ ωk)·τG, written like any fold (atomically, one tensor at a time)."""
    if req.base is None:
        raise LoraMergeError("--method linear_interp needs --base DIR: the pretrained model θpre, because "
                             "θ = θpre + ω·τD + (1 − ω)·τG with τG = θG − θpre")
    if req.cft is not None:
        raise LoraMergeError("--cft is for --method wise_ft; linear_interp folds skill packs (--adapters)")
    general, base = WeightSet.open(req.general), WeightSet.open(req.base)
    packs = load_packs(req.packs, Path(req.adapters_dir), verify=req.verify)
    g_size = req.general_size if req.general_size is not None else general_size_from_folder(req.general)
    weights = choose_weights([p.name for p in packs], [p.instances for p in packs], req.weights, g_size,
                             rule="size_fraction")
    target = TargetModel.from_weights(general, read_config(Path(req.general)))
    warnings = compatibility_warnings(packs, Path(req.general), general)
    terms = scaled_pack_terms(packs, weights, target, base)
    # τG spans every stored weight; a virtual (tied) head only when a pack unties it, or the output would too.
    touched = {k for tv, _ in terms for k in tv.keys()}
    names = [n for n in target.shapes if n not in target.virtual or n in touched]
    tau_g = model_difference("τG = θG − θpre", general, base, target, names, ("the general model", "the base model"))
    total = sum(w.value for w in weights)
    record = FoldedPack("τG = θG − θpre", str(req.base), "model-difference",
                        Weight(-total, "derived", f"−Σω = {-total:.4g} (from (1 − Σω)·τG − τG)"), {}, None,
                        len(tau_g.keys()))
    terms.append((-total * tau_g, record))
    return fold_vectors(req, general, target, terms, g_size, warnings, formula=LINEAR_INTERP_FORMULA)


def fold_wise_ft(req: FoldRequest) -> FoldResult:
    """θ = θG + ω·(θCFT − θG); ω = |D|/(|D|+|G|) from θCFT's lora_merge.json unless given."""
    if req.cft is None:
        raise LoraMergeError("--method wise_ft needs --cft DIR: the model that continued finetuning θG on the skill "
                             "data, because θ = θG + ω·(θCFT − θG)")
    if req.packs:
        raise LoraMergeError("--method wise_ft interpolates towards the --cft model and takes no skill packs; "
                             "drop --adapters (or use linear_interp / linear for packs)")
    if req.weights is not None and len(req.weights) != 1:
        raise LoraMergeError(f"--weights gives {len(req.weights)} values; wise_ft takes one ω")
    general, cft = WeightSet.open(req.general), WeightSet.open(req.cft)
    g_size = req.general_size if req.general_size is not None else general_size_from_folder(req.general)
    label = Path(req.cft).name
    try:
        d_size = general_size_from_folder(req.cft)
    except LoraMergeError:
        d_size = None
    weight = choose_weights([label], [d_size], req.weights, g_size, rule="size_fraction")[0]
    target = TargetModel.from_weights(general, read_config(Path(req.general)))
    names = [n for n in target.shapes if n not in target.virtual or n in cft]
    diff = model_difference(f"θCFT − θG ({label})", cft, general, target, names, ("the CFT model", "the general model"))
    extra = [k for k in cft.keys() if k not in target.shapes]
    if extra:
        raise LoraMergeError(f"the CFT model {req.cft} has weights the general model lacks ({', '.join(extra[:3])}); "
                             "it must be θG continued on D, with the same architecture")
    record = FoldedPack(label, str(req.cft), "cft-model", weight, {}, d_size, len(diff.keys()))
    return fold_vectors(req, general, target, [(weight.value * diff, record)], g_size, [], formula=WISE_FT_FORMULA)


VARIANTS = {"linear_interp": fold_linear_interp, "wise_ft": fold_wise_ft}


def fold_variant(req: FoldRequest) -> FoldResult:
    """Dispatch a FoldRequest whose method is one of the paper's variants."""
    variant = VARIANTS.get(req.method)
    if variant is None:
        raise LoraMergeError(f"{req.method!r} is not a variant; choose one of: {', '.join(VARIANTS)}")
    return variant(req)
