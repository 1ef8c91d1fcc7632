"""What a merged pack inherits from its sources: one θpre, the data actually used, the ω each source ends up at.

`pack merge` turns several packs into one, and the merged pack must not claim more than its sources can show:

- **One base.** Every source's sketch of θpre (:mod:`lora_merge.pack.provenance`) is checked against ``--base``
  when it is given (equal up to a low-precision copy's rounding, :data:`SAME_BASE_DISTANCE`), else against every
  other source at the weights they both sketch. A source without a sketch, sources that disagree, or sources that
  sketch no weight in common (without ``--base`` nothing tells their bases apart) are refused unless
  ``--allow-foreign-base``; the merged pack then records what was allowed and carries no sketch. Otherwise it
  carries the sources' own sketches joined, never a fresh sketch of ``--base``, which would vouch for a base the
  sources were not shown to come from.
- **|D| actually used**: Σ|Dk| over the sources merged with ωk ≠ 0 (:func:`used_instances`). With the default
  ωk = |Dk|/Σ|D| a size-rule fold of the merged pack equals folding every source at |Dk|/|G|; with explicit ω
  (``--weights 1,0``) a dropped source's data no longer counts, and the size rule scales the given mixture by
  |D|/|G|.
- **Effective ω.** A merged pack is Σ ωk·τk; merging it again, or folding it at ω, multiplies. Each merged pack
  records the largest |ω| any original source is scaled by inside it (:func:`effective_scale`), and both the
  next merge and the fold hold the product to the ±10 bound every ω is held to (:func:`check_effective`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.printable import printable
from lora_merge.io.fingerprint import read_config
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.provenance import Sketch, base_distance, pack_sketch, union
from lora_merge.pack.skillpack import SkillPack
from lora_merge.pack.task_vector import TargetModel
from lora_merge.rules.omega import OMEGA_LIMIT

# Two sketches of one θpre hold the same values; a copy kept in bfloat16 rounds each by at most 2⁻⁸ relative.
# Another initialisation or another pretraining run is at a relative distance of order 1 (docs/results.md).
SAME_BASE_DISTANCE = 1e-2


@dataclass
class MergedBase:
    """The merged pack's sketch (None when a source had none or they disagree) and what was allowed."""

    sketch: Sketch | None
    allowed: list[str] = field(default_factory=list)  # the problems --allow-foreign-base let through


def _pair_distance(s: Sketch, t: Sketch) -> tuple[float, int] | None:
    """The pooled relative distance of two sketches at the weights both sketch (None: none in common)."""
    if s.seed != t.seed:
        return None  # positions drawn differently: nothing comparable
    shared = sorted(n for n in s.values.keys() & t.values.keys())
    if not shared:
        return None
    if any(s.numels[n] != t.numels[n] for n in shared):
        return math.inf, len(shared)
    k = min(s.samples, t.samples)  # positions for fewer samples are a prefix of those for more
    a = torch.cat([s.values[n][:k] for n in shared]).double()
    b = torch.cat([t.values[n][:k] for n in shared]).double()
    ref = float(a.norm())
    diff = float((a - b).norm())
    return (diff / ref if ref > 0 else (0.0 if diff == 0 else math.inf)), len(shared)


def _against_base(packs: Sequence[SkillPack], sketches: Sequence[Sketch | None], base_dir: Path) -> list[str]:
    general = WeightSet.open(base_dir)
    target = TargetModel.from_weights(general, read_config(base_dir))
    problems = []
    for p, s in zip(packs, sketches, strict=True):
        if s is None:
            continue
        d = base_distance(s, general, target)
        if d.missing or not d.pooled <= SAME_BASE_DISTANCE:  # NaN counts as different
            problems.append(f"--base {base_dir} is not the base pack {printable(p.name)!r} was trained from "
                            f"(relative distance {d.pooled:.3g}, cosine {d.cosine:.2f} over {d.compared} sketched "
                            f"weights{f', {len(d.missing)} missing' if d.missing else ''})")
    return problems


def _against_each_other(packs: Sequence[SkillPack], sketches: Sequence[Sketch | None]) -> list[str]:
    problems = []
    present = [(p, s) for p, s in zip(packs, sketches, strict=True) if s is not None]
    for (p, s), (q, t) in itertools.combinations(present, 2):
        names = f"packs {printable(p.name)!r} and {printable(q.name)!r}"
        measured = _pair_distance(s, t)
        if measured is None:
            problems.append(f"{names} sketch no weight in common, so whether they share a base cannot be told "
                            "without it: pass --base with the pretrained model they were trained from")
        elif not measured[0] <= SAME_BASE_DISTANCE:
            problems.append(f"{names} were trained from different bases (their sketches of θpre differ by a "
                            f"relative distance of {measured[0]:.3g} at the {measured[1]} weights both sketch)")
    return problems


def merged_base(packs: Sequence[SkillPack], base_dir: Path | None, allow_foreign: bool = False) -> MergedBase:
    """Check that the sources share one θpre (against ``base_dir`` when given, else against each other) and
    return the merged pack's sketch; refuse (unless ``allow_foreign``) what cannot be shown to share it."""
    sketches = [pack_sketch(p) for p in packs]
    problems = [f"pack {printable(p.name)!r} records no sketch of its base, so whether it shares a base with the "
                "others cannot be checked" for p, s in zip(packs, sketches, strict=True) if s is None]
    problems += (_against_base(packs, sketches, Path(base_dir)) if base_dir is not None
                 else _against_each_other(packs, sketches))
    if not problems:
        return MergedBase(union([s for s in sketches if s is not None]))
    if not allow_foreign:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LoraMergeError(
            f"pack merge: {problems[0]}{more}. A merged pack carries one base; merging these would hide where they "
            "came from, and the fold could no longer refuse a foreign one. Merge packs trained from one base, or "
            "pass --allow-foreign-base to merge them anyway (recorded in the merged pack, which then has no sketch)")
    return MergedBase(None, problems)


def used_instances(instances: Sequence[int | None], omegas: Sequence[float]) -> int | None:
    """|D| of a merged pack: Σ|Dk| over the sources merged with ωk ≠ 0 (None when one of those is unknown)."""
    used = [d for d, w in zip(instances, omegas, strict=True) if w != 0]
    return sum(used) if used and all(d is not None for d in used) else None  # type: ignore[misc]


def effective_scale(pack: SkillPack) -> float:
    """The largest |ω| an original source is scaled by inside ``pack``: 1 for a trained pack; for a merged pack
    what its skill.json records (for one merged before this was recorded: its largest source |ω|)."""
    merge = (pack.manifest.training.model_extra or {}).get("merge") if pack.manifest else None
    if not isinstance(merge, dict):
        return 1.0
    recorded = merge.get("effective_scale")
    if _number(recorded):
        return float(recorded)
    omegas = [abs(s["omega"]) for s in merge.get("sources") or [] if isinstance(s, dict) and _number(s.get("omega"))]
    return max(omegas + [1.0])


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def check_effective(packs: Sequence[SkillPack], omegas: Sequence[float], what: str) -> list[float]:
    """|ωk|·effective_scale(pk) per pack, refusing a product beyond the ±10 bound (a merge of merges, or a
    merged pack folded at a large ω, would otherwise escape the bound each step is held to)."""
    scales = []
    for p, w in zip(packs, omegas, strict=True):
        inner = effective_scale(p)
        scale = abs(w) * inner
        if inner != 1.0 and not scale <= OMEGA_LIMIT:
            raise LoraMergeError(
                f"{what}: pack {printable(p.name)!r} is a merge that already scales one of its sources by "
                f"{inner:g}; at ω = {w:g} that source would be scaled by {scale:g}, beyond the ±{OMEGA_LIMIT:g} "
                "bound every ω is held to. Use a smaller ω, or merge the original packs in one step")
        scales.append(scale)
    return scales
