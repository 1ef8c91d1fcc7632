"""Provenance: a sketch of θpre recorded with every pack, and the fold's check that θG descends from it.

τ = θD − θpre only means something when it is added to a model that descends from θpre. The layout check
(:func:`lora_merge.fold.plan.compatibility_warnings`) refuses another family, but a model of the same
architecture and another lineage (a fresh initialisation, another pretraining run) has the same names and
shapes and would fold silently. So every pack written where θpre is at hand records a sketch of it: for
each stored weight the pack touches, :data:`SAMPLES` elements at flat positions anyone can recompute
(:func:`sample_positions`: sha256 of ``seed/name/i``, modulo the tensor's size), as float32 in
``base_sketch.safetensors`` (hashed with the pack; 24.5 kB for SmolLM2's 210 adapted weights). The fold reads θG at the same positions (a
gather from the memory map: the pages holding those elements, never a whole tensor) and measures

    d = median over the sampled weights of ‖θG[S] − θpre[S]‖ / ‖θpre[S]‖,
    c = median over the sampled weights of cos(θG[S], θpre[S]).

Both are printed and recorded. The verdict is c: a model tuned from θpre keeps θpre as its main component
(c near 1), weights independent of θpre have c ≈ 0 whatever their scale, and a small model whose update is
as large as its random-init θpre (d ≈ 1, like an unrelated model's) still has c ≈ 0.7.
Measured on SmolLM2-135M (docs/results.md "Provenance"); under :data:`DESCENT_COSINE` the fold is refused
unless the user allows it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge import __version__
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.printable import printable
from lora_merge.io.fingerprint import read_config
from lora_merge.io.shards import PlannedTensor, ShardedWriter
from lora_merge.io.tensors import SINGLE_NAME, SafetensorsFile, WeightSet
from lora_merge.pack.skillpack import BASE_SKETCH, SkillPack, load_pack
from lora_merge.pack.task_vector import TargetModel, TaskVector

SAMPLES = 16  # per touched weight: SmolLM2's 210 adapted weights make a 13 kB matrix (25 kB with the names)
MIN_TOTAL = 256  # a pack touching few weights samples more of each, so its verdict is as sure as a large one's
SEED = 0
SKETCH_FORMAT = "1"
MAX_SAMPLES = 4096  # a sketch that asks for more per weight is not one of ours: refused, not read
# The verdict (docs/results.md, "Provenance"): θG descends from the pack's base when, in the median sampled
# weight, θG still points along θpre: cos(θG[S], θpre[S]) ≥ 0.5, i.e. θpre is more than half of θG's norm.
# Weights independent of θpre have cosine 0 ± 1/√samples (two fresh initialisations of SmolLM2-135M's config:
# −0.03 to 0.005 on a LoRA pack's sketch, 0.07 and 0.12 on a dense one, whose norm weights lean positive); models tuned from θpre keep θpre as their main component: SmolLM2's θG and θCFT at 0.99999,
# the test suite's pico θGs, whose random-init θpre training moved by up to its own size (relative distance
# 0.44–0.95), at 0.75–0.92. A relative distance cannot tell such a θG from an unrelated model (both ≈ 1).
DESCENT_COSINE = 0.5
# A pack's sketch covers every weight the pack changes (sketch_of samples exactly those); one covering under half of
# them was not written with this pack and is refused, one covering most is compared where it can be, with a warning.
MIN_COVERAGE = 0.5


def sample_positions(name: str, numel: int, count: int = SAMPLES, seed: int = SEED) -> list[int]:
    """The flat positions sampled in tensor ``name`` of ``numel`` elements: reproducible from the name alone."""
    return [int.from_bytes(hashlib.sha256(f"{seed}/{name}/{i}".encode()).digest()[:8], "little") % numel
            for i in range(min(count, numel))]


@dataclass
class Sketch:
    """θpre sampled: per stored weight name, its size and its :data:`SAMPLES` values at :func:`sample_positions`."""

    values: dict[str, torch.Tensor]
    numels: dict[str, int]
    seed: int = SEED
    samples: int = SAMPLES
    base: str | None = None

    def positions(self, name: str) -> list[int]:
        return sample_positions(name, self.numels[name], self.samples, self.seed)


def touched_base_weights(pack: SkillPack, base: WeightSet, base_dir: Path) -> list[str]:
    """The stored θpre weights the pack changes (a tied head the pack adapts is its embedding's tensor)."""
    target = TargetModel.from_weights(base, read_config(Path(base_dir)))
    names = TaskVector.from_pack(pack, target, base).keys()
    return list(dict.fromkeys(target.virtual.get(n, n) for n in names))


def sketch_of(base: WeightSet, names: Sequence[str], label: str | None = None) -> Sketch:
    """The sketch of ``base`` at ``names``: floating-point weights of at least SAMPLES elements (an integer
    buffer is not a weight; a tensor smaller than a sample says nothing a distance could use)."""
    numels = {n: base.info(n).numel for n in names
              if base.info(n).dtype.startswith(("F", "BF")) and base.info(n).numel >= SAMPLES}
    samples = min(max(SAMPLES, -(-MIN_TOTAL // max(len(numels), 1))), *numels.values()) if numels else SAMPLES
    values = {n: base.elements(n, sample_positions(n, k, samples)) for n, k in numels.items()}
    return Sketch(values, numels, samples=samples, base=label)


def write_sketch(folder: Path, sketch: Sketch) -> Path:
    """``base_sketch.safetensors`` in ``folder`` (a staged pack folder): one float32 matrix, a row of samples
    per weight, the weights' names and sizes and how positions are drawn in the metadata (a few kB)."""
    names = sorted(sketch.values)
    matrix = torch.stack([sketch.values[n].to(torch.float32) for n in names]) if names else \
        torch.zeros(0, sketch.samples)
    meta = {"lora_merge": __version__, "content": "base_sketch", "sketch_format": SKETCH_FORMAT,
            "seed": str(sketch.seed), "samples": str(sketch.samples),
            "positions": "row i of values: weights[i] at sha256(f'{seed}/{name}/{j}')[:8] little-endian mod numel",
            "weights": json.dumps([[n, sketch.numels[n]] for n in names], separators=(",", ":")),
            "base": sketch.base or ""}
    writer = ShardedWriter(Path(folder), [PlannedTensor("values", torch.float32, tuple(matrix.shape))], 1 << 62, meta)
    try:
        writer.write("values", matrix.contiguous())
        writer.finish()
    finally:
        writer.abort()
    os.replace(Path(folder) / SINGLE_NAME, Path(folder) / BASE_SKETCH)
    return Path(folder) / BASE_SKETCH


def sketch_pack(folder: Path, base_dir: Path) -> int:
    """Sketch θpre (``base_dir``) where the pack in ``folder`` touches it; returns the number of weights."""
    base = WeightSet.open(base_dir)
    pack = load_pack(folder, verify=False)
    sketch = sketch_of(base, touched_base_weights(pack, base, Path(base_dir)), str(base_dir))
    write_sketch(Path(folder), sketch)
    return len(sketch.values)


def read_sketch(src: SafetensorsFile) -> Sketch:
    """Read and check a sketch file: a finite float32 matrix with a row of ``samples`` values per weight its
    metadata names."""
    bad = f"{src.path}: not a valid base sketch"
    meta = src.metadata
    try:
        weights = [(str(n), int(k)) for n, k in json.loads(meta["weights"])]
        seed, samples = int(meta["seed"]), int(meta["samples"])
    except (KeyError, ValueError, TypeError, AttributeError):
        raise LoraMergeError(f"{bad} (its metadata lacks the weights, seed or sample count)") from None
    if meta.get("sketch_format") != SKETCH_FORMAT or not 0 < samples <= MAX_SAMPLES:
        raise LoraMergeError(f"{bad} (format {meta.get('sketch_format')!r}, {samples} samples; this lora_merge reads "
                             f"format {SKETCH_FORMAT} with at most {MAX_SAMPLES})")
    info = src.tensors.get("values")
    if info is None or info.dtype != "F32" or info.shape != (len(weights), samples) or len(src.tensors) != 1:
        shape = f"{info.dtype} {list(info.shape)}" if info else "no 'values' tensor"
        raise LoraMergeError(f"{bad} ({shape}; expected F32 [{len(weights)}, {samples}])")
    if any(k < samples for _, k in weights) or len({n for n, _ in weights}) != len(weights):
        raise LoraMergeError(f"{bad} (a weight named twice, or smaller than a sample)")
    matrix = src.get("values").clone()
    if not torch.isfinite(matrix).all():
        raise LoraMergeError(f"{bad} (it holds NaN or Inf)")
    return Sketch({n: matrix[i] for i, (n, _) in enumerate(weights)}, dict(weights), seed, samples,
                  meta.get("base") or None)


def pack_sketch(pack: SkillPack) -> Sketch | None:
    """The pack's sketch, or None when it has none (written before sketches, or without θpre at hand)."""
    return read_sketch(pack.source(BASE_SKETCH)) if pack.has(BASE_SKETCH) else None  # the bytes verify hashed


def union(sketches: Sequence[Sketch]) -> Sketch | None:
    """One sketch covering all of ``sketches`` (pack merge, once :mod:`lora_merge.pack.lineage` has checked that
    they sketch one θpre), or None when they cannot be joined (positions drawn differently, a weight of two
    sizes). Positions for fewer samples are a prefix of those for more, so every row is cut to the smallest
    sample count; a weight two sources sketch keeps the first one's values."""
    if not sketches or len({s.seed for s in sketches}) > 1:
        return None
    samples = min(s.samples for s in sketches)
    values: dict[str, torch.Tensor] = {}
    numels: dict[str, int] = {}
    for s in sketches:
        for n, v in s.values.items():
            if n in values:
                if numels[n] != s.numels[n]:
                    return None  # two bases: the merged pack has no single θpre to sketch
                continue
            values[n], numels[n] = v[:samples], s.numels[n]
    return Sketch(values, numels, sketches[0].seed, samples, sketches[0].base)


@dataclass
class BaseDistance:
    """How far θG is from a pack's θpre at the sketched positions."""

    distance: float  # the median over compared weights of ‖θG[S] − θpre[S]‖ / ‖θpre[S]‖ (inf: none compared)
    cosine: float  # the median over compared weights of cos(θG[S], θpre[S]) (0: none compared): the verdict's
    pooled: float  # the distance ratio over every compared element at once (large-valued weights weigh most)
    compared: int  # weights compared
    missing: list[str] = field(default_factory=list)  # sketched weights θG does not hold (or holds reshaped)
    per_tensor: dict[str, float] = field(default_factory=dict)  # relative distance per weight
    cosines: dict[str, float] = field(default_factory=dict)
    covered: set[str] = field(default_factory=set)  # θG's stored names of the weights compared

    def least_aligned(self, count: int = 3) -> list[tuple[str, float]]:
        return sorted(self.cosines.items(), key=lambda kv: kv[1])[:count]


def _relative(diff: float, ref: float) -> float:
    return diff / ref if ref > 0 else (0.0 if diff == 0 else math.inf)


def base_distance(sketch: Sketch, general: WeightSet, target: TargetModel,
                  only: Collection[str] | None = None) -> BaseDistance:
    """Compare θG with the sketch at its positions, reading only those elements (with ``only``, only the
    sketched weights that are these stored weights of θG: the ones a pack changes)."""
    diff2 = ref2 = 0.0
    per, cos, missing, covered = {}, {}, [], set()
    for name, ref in sketch.values.items():
        try:
            hits = target.resolve(name)
        except LoraMergeError:
            hits = []
        stored = target.virtual.get(hits[0], hits[0]) if len(hits) == 1 else None
        if stored is None or stored not in general or general.info(stored).numel != sketch.numels[name]:
            missing.append(name)
            continue
        if only is not None and stored not in only:
            continue  # a weight the pack does not change says nothing about the base of what it changes
        covered.add(stored)
        got, ref = general.elements(stored, sketch.positions(name)).double(), ref.double()
        d2, r2, g2 = float((got - ref).square().sum()), float(ref.square().sum()), float(got.square().sum())
        per[name] = _relative(math.sqrt(d2), math.sqrt(r2))
        cos[name] = float(got @ ref) / math.sqrt(r2 * g2) if r2 > 0 and g2 > 0 else float(r2 == g2)
        diff2, ref2 = diff2 + d2, ref2 + r2
    if not per:
        return BaseDistance(math.inf, 0.0, math.inf, 0, missing, covered=covered)
    # Medians weigh every weight alike: pooled, norm weights (values ≈ 1) would outweigh the matrices (≈ 0.05)
    # of a dense pack, and two unrelated models' norm weights are close.
    return BaseDistance(statistics.median(per.values()), statistics.median(cos.values()),
                        _relative(math.sqrt(diff2), math.sqrt(ref2)), len(per), missing, per, cos, covered)


@dataclass
class BaseCheck:
    """The provenance verdict for one pack: recorded in lora_merge.json, printed by the fold."""

    status: str  # descends | foreign-allowed | no-sketch
    distance: float | None = None
    cosine: float | None = None
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _uncovered(general: WeightSet, target: TargetModel, touched: Iterable[str], d: BaseDistance) -> tuple[int, list[str]]:
    """(how many sketchable weights the pack changes, those of them the sketch did not compare)."""
    stored = {target.virtual.get(n, n) for n in touched}
    changed = {n for n in stored if n in general and general.info(n).dtype.startswith(("F", "BF"))
               and general.info(n).numel >= SAMPLES}  # what sketch_of would have sampled
    return len(changed), sorted(changed - d.covered)


def check_base(pack: SkillPack, general: WeightSet, target: TargetModel, general_dir: Path,
               allow_foreign: bool = False, touched: Iterable[str] | None = None) -> BaseCheck:
    """Refuse (unless ``allow_foreign``) a θG that does not descend from the pack's θpre; a pack without a
    sketch is folded with a notice. With ``touched`` (θG's names of the weights the pack changes) the verdict
    rests on those weights only, and a sketch covering under :data:`MIN_COVERAGE` of them is refused: a sketch
    of other weights (say the norms, equal in any initialisation) says nothing about the pack's changes."""
    name = printable(pack.name)
    sketch = pack_sketch(pack)
    if sketch is None:
        return BaseCheck("no-sketch", notices=[
            f"pack {name!r} records no sketch of its base, so whether {general_dir} descends from it is not "
            "checked (packs written by lora_merge with their base at hand have one)"])
    touched = list(touched) if touched is not None else None
    d = base_distance(sketch, general, target, only={target.virtual.get(n, n) for n in touched} if touched else None)
    changed, uncovered = _uncovered(general, target, touched or [], d) if touched else (0, [])
    coverage = (f"pack {name!r}: its sketch of its base covers {changed - len(uncovered)} of the {changed} weights "
                f"it changes (not {', '.join(printable(n) for n in uncovered[:3])}{'…' if len(uncovered) > 3 else ''})")
    if changed and (changed - len(uncovered)) < MIN_COVERAGE * changed:
        if not allow_foreign:
            raise LoraMergeError(
                f"{coverage}; a pack's own sketch covers every one, so this one cannot show where the pack's changes "
                "come from (the pack was edited, or the sketch belongs to another pack). Re-fetch the pack, or pass "
                "--allow-foreign-base to fold it anyway")
        return BaseCheck("foreign-allowed", None, None, [f"{coverage}: --allow-foreign-base, folded anyway"])
    where = ", ".join(f"{printable(n)} {v:.2f}" for n, v in d.least_aligned())
    measured = (f"{general_dir} is at relative distance {d.distance:.3g} from the pack's base "
                f"({sketch.base or 'unnamed'}), cosine {d.cosine:.2f} (medians of {d.compared} sampled weights; "
                f"least aligned: {where or 'none compared'})")
    if not d.cosine >= DESCENT_COSINE:  # NaN (nothing comparable) counts as foreign
        if not allow_foreign:
            raise LoraMergeError(
                f"the general model does not descend from the base pack {name!r} was trained from: {measured}; a "
                f"model tuned from that base keeps a cosine of at least {DESCENT_COSINE:g} with it, an unrelated one "
                "is near 0 (docs/results.md, Provenance). Fold the pack into a descendant of its base, or pass "
                "--allow-foreign-base to fold it anyway")
        return BaseCheck("foreign-allowed", d.distance, d.cosine, [f"pack {name!r}: --allow-foreign-base: {measured}; folded anyway"])
    warnings = [f"{coverage}; the rest were compared"] if uncovered else []
    if d.missing:
        warnings.append(f"pack {name!r}: {len(d.missing)} sketched weight(s) of its base are not in {general_dir} "
                        f"({', '.join(printable(n) for n in d.missing[:3])}); compared the other {d.compared}")
    return BaseCheck("descends", d.distance, d.cosine, warnings,
                     [f"pack {name!r}: {general_dir} descends from its base (relative distance {d.distance:.3g}, "
                      f"cosine {d.cosine:.4f}; medians of {d.compared} sampled weights)"])
