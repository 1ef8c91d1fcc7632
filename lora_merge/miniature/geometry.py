"""How far fine-tunes move the weights: ‖τ‖/‖θpre‖ and cos(τG, τD), the numbers that say whether merging can work.

Task vectors add (θG + ω·τD keeps both behaviours) only in the near-linear regime around θpre, where
the updates are small against the weights and the skill's update does not point along or against the
general one. Every result of the study is printed beside these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_merge.io.fingerprint import read_config
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.skillpack import load_pack
from lora_merge.pack.task_vector import TargetModel, TaskVector


@dataclass(frozen=True)
class Geometry:
    rel_norm: float  # ‖τD‖ / ‖θpre‖ over all weights
    cos_general: float  # cos(τG, τD) over all weights


def dense_delta(model: Path, base: Path) -> dict[str, torch.Tensor]:
    """θ − θpre per tensor (float32) for a model folder of the same family."""
    m, b = WeightSet.open(model), WeightSet.open(base)
    return {k: m.get(k).float() - b.get(k).float() for k in b.keys() if k in m.keys()}


def base_norm(base: Path) -> float:
    b = WeightSet.open(base)
    return math.sqrt(sum(float(b.get(k).float().pow(2).sum()) for k in b.keys()))


def pack_delta(pack_dir: Path, general: Path, base: Path) -> dict[str, torch.Tensor]:
    """τD of a skill pack (LoRA or dense) as dense float32 tensors."""
    target = TargetModel.from_weights(WeightSet.open(general), read_config(general))
    tv = TaskVector.from_pack(load_pack(pack_dir), target, WeightSet.open(base))
    return {k: tv.delta(k, torch.device("cpu")).float() for k in tv.keys()}


def norm(delta: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in delta.values()))


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    dot = sum(float((a[k] * b[k]).sum()) for k in a.keys() & b.keys())
    na, nb = norm(a), norm(b)
    return dot / (na * nb) if na and nb else 0.0


def geometry(delta: dict[str, torch.Tensor], tau_general: dict[str, torch.Tensor], theta_norm: float) -> Geometry:
    return Geometry(norm(delta) / theta_norm, cosine(delta, tau_general))
