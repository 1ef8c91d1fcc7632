"""Provenance: a sketch of θpre recorded with every pack, and the fold's check that θG descends from it.

τ = θD − θpre only means something when it is added to a model that descends from θpre. The layout check
(:func:`lora_merge.plan.compatibility_warnings`) refuses another family, but a model of the same
architecture and another lineage (a fresh initialisation, another pretraining run) has the same names and
shapes and would fold silently. So every pack written where θpre is at hand records a sketch of it: for
each stored weight the pack touches, :data:`SAMPLES` elements at flat positions anyone can recompute
(:func:`sample_positions`: sha256 of ``seed/name/i``, modulo the tensor's size), as float32 in
``base_sketch.safetensors`` (a few kB, hashed with the pack). The fold reads θG at the same positions (a
gather from the memory map: the pages holding those elements, never a whole tensor) and measures

    d = ‖θG[S] − θpre[S]‖ / ‖θpre[S]‖   over every sampled element S.

A model tuned from θpre is well under a percent away; an unrelated model of the same shapes about 1
(measured on SmolLM2-135M, docs/results.md "Provenance"). Above :data:`FOREIGN_DISTANCE` the fold is
refused unless the user allows it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge import __version__
from lora_merge.errors import LoraMergeError
from lora_merge.fingerprint import read_config
from lora_merge.packfiles import check_pack_file
from lora_merge.printable import printable
from lora_merge.shards import PlannedTensor, ShardedWriter
from lora_merge.skillpack import BASE_SKETCH, SkillPack, load_pack
from lora_merge.task_vector import TargetModel, TaskVector
from lora_merge.tensors import SINGLE_NAME, SafetensorsFile, WeightSet

SAMPLES = 16  # per touched tensor: SmolLM2's 210 adapted weights make a 13 kB matrix (25 kB with the names)
SEED = 0
SKETCH_FORMAT = "1"
MAX_SAMPLES = 4096  # a sketch that asks for more per tensor is not one of ours: refused, not read
# Relative distance above which θG is taken not to descend from the pack's base. Measured on SmolLM2-135M
# (docs/results.md, "Provenance"): θG and θCFT, tuned from θpre, lie at 0.0022 and 0.0024 (no weight above
# 0.014); two fresh initialisations of θpre's config at 1.005 and 1.007 (no weight below 0.84). 0.3 is 3× under
# the unrelated models and 100× over the descendants, room for fine-tunes that move far more than the demo's.
FOREIGN_DISTANCE = 0.3


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
    values, numels = {}, {}
    for n in names:
        info = base.info(n)
        if info.dtype.startswith(("F", "BF")) and info.numel >= SAMPLES:
            numels[n] = info.numel
            values[n] = base.elements(n, sample_positions(n, info.numel))
    return Sketch(values, numels, base=label)


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


def read_sketch(path: Path, pack_dir: Path | None = None) -> Sketch:
    """Read and check a sketch file (inside ``pack_dir`` when given): a finite float32 matrix with a row of
    ``samples`` values per weight its metadata names."""
    bad = f"{path}: not a valid base sketch"
    if pack_dir is not None:
        check_pack_file(path, pack_dir)
    src = SafetensorsFile(path)
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
    path = pack.path / BASE_SKETCH
    return read_sketch(path, pack.path) if os.path.lexists(path) else None


def union(sketches: Sequence[Sketch]) -> Sketch | None:
    """One sketch covering all of ``sketches`` (pack merge), or None when they disagree about θpre."""
    if not sketches or len({(s.seed, s.samples) for s in sketches}) > 1:
        return None
    values: dict[str, torch.Tensor] = {}
    numels: dict[str, int] = {}
    for s in sketches:
        for n, v in s.values.items():
            if n in values and (numels[n] != s.numels[n] or not torch.equal(values[n], v)):
                return None  # two bases: the merged pack has no single θpre to sketch
            values[n], numels[n] = v, s.numels[n]
    return Sketch(values, numels, sketches[0].seed, sketches[0].samples, sketches[0].base)


@dataclass
class BaseDistance:
    """How far θG is from a pack's θpre at the sketched positions."""

    distance: float  # ‖θG[S] − θpre[S]‖ / ‖θpre[S]‖ over every compared element
    compared: int  # tensors compared
    missing: list[str] = field(default_factory=list)  # sketched weights θG does not hold (or holds reshaped)
    per_tensor: dict[str, float] = field(default_factory=dict)

    def worst(self, count: int = 3) -> list[tuple[str, float]]:
        return sorted(self.per_tensor.items(), key=lambda kv: -kv[1] if math.isfinite(kv[1]) else -math.inf)[:count]


def _relative(diff: float, ref: float) -> float:
    return diff / ref if ref > 0 else (0.0 if diff == 0 else math.inf)


def base_distance(sketch: Sketch, general: WeightSet, target: TargetModel) -> BaseDistance:
    """Compare θG with the sketch at its positions, reading only those elements."""
    diff2 = ref2 = 0.0
    per, missing = {}, []
    for name, ref in sketch.values.items():
        try:
            hits = target.resolve(name)
        except LoraMergeError:
            hits = []
        stored = target.virtual.get(hits[0], hits[0]) if len(hits) == 1 else None
        if stored is None or stored not in general or general.info(stored).numel != sketch.numels[name]:
            missing.append(name)
            continue
        got = general.elements(stored, sketch.positions(name))
        d2, r2 = float((got.double() - ref.double()).square().sum()), float(ref.double().square().sum())
        per[name] = _relative(math.sqrt(d2), math.sqrt(r2))
        diff2, ref2 = diff2 + d2, ref2 + r2
    return BaseDistance(_relative(math.sqrt(diff2), math.sqrt(ref2)) if per else math.inf, len(per), missing, per)


@dataclass
class BaseCheck:
    """The provenance verdict for one pack: recorded in lora_merge.json, printed by the fold."""

    status: str  # descends | foreign-allowed | no-sketch
    distance: float | None = None
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def check_base(pack: SkillPack, general: WeightSet, target: TargetModel, general_dir: Path,
               allow_foreign: bool = False) -> BaseCheck:
    """Refuse (unless ``allow_foreign``) a θG that does not descend from the pack's θpre; a pack without a
    sketch is folded with a notice."""
    name = printable(pack.name)
    sketch = pack_sketch(pack)
    if sketch is None:
        return BaseCheck("no-sketch", notices=[
            f"pack {name!r} records no sketch of its base, so whether {general_dir} descends from it is not "
            "checked (packs written by lora_merge with their base at hand have one)"])
    d = base_distance(sketch, general, target)
    where = ", ".join(f"{printable(n)} {v:.3g}" for n, v in d.worst())
    measured = (f"{general_dir} is at relative distance {d.distance:.3g} from the pack's base "
                f"({sketch.base or 'unnamed'}) at {d.compared} sampled weights (most: {where or 'none compared'})")
    if not d.distance <= FOREIGN_DISTANCE:  # NaN or inf (nothing comparable) counts as foreign
        if not allow_foreign:
            raise LoraMergeError(
                f"the general model does not descend from the base pack {name!r} was trained from: {measured}; a "
                f"model tuned from that base is under {FOREIGN_DISTANCE:g} (docs/results.md, Provenance). Fold the "
                "pack into a descendant of its base, or pass --allow-foreign-base to fold it anyway")
        return BaseCheck("foreign-allowed", d.distance, [f"pack {name!r}: --allow-foreign-base: {measured}; folded anyway"])
    warnings = []
    if d.missing:
        warnings.append(f"pack {name!r}: {len(d.missing)} sketched weight(s) of its base are not in {general_dir} "
                        f"({', '.join(printable(n) for n in d.missing[:3])}); compared the other {d.compared}")
    far = [n for n, v in d.per_tensor.items() if not v <= FOREIGN_DISTANCE]
    if far:
        warnings.append(f"pack {name!r}: θG descends from its base overall (distance {d.distance:.3g}) but "
                        f"{len(far)} weight(s) differ as much as an unrelated model's: "
                        f"{', '.join(printable(n) for n in far[:3])}")
    return BaseCheck("descends", d.distance, warnings,
                     [f"pack {name!r}: {general_dir} descends from its base (relative distance {d.distance:.3g} "
                      f"at {d.compared} sampled weights)"])
