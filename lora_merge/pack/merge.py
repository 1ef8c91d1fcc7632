"""Several skill packs merged into one pack: Σ ωk·τk as a single adapter people can share or serve.

- ``linear`` on LoRA packs is exact: per module the scaled factors are concatenated,
  B = [ω₁s₁B₁ | ω₂s₂B₂ | …], A = [A₁; A₂; …], so B·A = Σ ωk·sk·Bk·Ak with rank Σ rk and
  ``lora_alpha = r`` (scale 1). The result is a standard PEFT adapter. (PEFT's own
  ``add_weighted_adapter`` "linear" combines A and B separately, which is not this sum.)
- Other rules (``ties``, ``dare_ties``, ``magnitude_prune``, …) are applied to each module's
  whole ΔW, exactly as the fold applies them, and the result is cut to rank R by truncated SVD;
  the relative Frobenius error is reported per tensor and overall.
- Packs that are not pure LoRA (dense τ, trained biases) give a dense pack, exact for every rule.

Default ω is each pack's share of the data, ωk = |Dk| / Σ|D|, and the merged pack records
|D| = Σ|Dk| over the sources merged with ωk ≠ 0: with the default ω, folding it with the size rule
(ω = Σ|D|/|G|) equals folding every source at its own |Dk|/|G|. Packs are bound to each other by weight
name (or to ``base`` when given, with the fold's own name rules), so a shape disagreement is an error before
anything is written. What the merged pack inherits (one θpre shown by the sources' sketches, the effective ω
of every original source through chained merges) is checked and recorded by :mod:`lora_merge.pack.lineage`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge import __version__
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.output import check_output, staged_output
from lora_merge.core.printable import printable
from lora_merge.io.fingerprint import read_config
from lora_merge.io.shards import PlannedTensor, ShardedWriter
from lora_merge.io.tensors import SINGLE_NAME, WeightSet
from lora_merge.pack.extract import ONE_FILE, WeightError, truncated_factors
from lora_merge.pack.lineage import MergedBase, check_effective, merged_base, used_instances
from lora_merge.pack.provenance import write_sketch
from lora_merge.pack.skillpack import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DENSE_WEIGHTS,
    DataInfo,
    Manifest,
    SkillPack,
    TrainingInfo,
    write_manifest,
)
from lora_merge.pack.task_vector import PEFT_PREFIX, LowRankDelta, TargetModel, TaskVector
from lora_merge.rules.combine import RULES, RuleOptions, get_rule
from lora_merge.rules.omega import Weight


@dataclass
class PackMergeRequest:
    """What `pack merge` can say, as one typed value."""

    packs: Sequence[SkillPack]
    out: Path
    name: str
    weights: Sequence[float] | None = None
    method: str = "linear"
    density: float = 1.0
    seed: int = 0
    rank: int | None = None  # SVD rank for non-linear rules on LoRA packs (default: Σ of the sources' ranks)
    base: Path | None = None
    description: str | None = None
    force: bool = False
    allow_foreign_base: bool = False  # merge sources that cannot be shown to share one θpre (recorded)


@dataclass
class PackMergeResult:
    out: Path
    kind: str  # lora | dense
    weights: list[Weight]
    instances: int | None
    tensors: int
    errors: list[WeightError] = field(default_factory=list)  # SVD truncation, per tensor
    seconds: float = 0.0
    scales: list[float] = field(default_factory=list)  # per source: the largest |ω| an original pack ends up at
    allowed: list[str] = field(default_factory=list)  # base problems --allow-foreign-base let through

    @property
    def overall_error(self) -> float | None:
        """‖ΔW − B·A‖ / ‖ΔW‖ over every truncated tensor, or None when nothing was truncated."""
        if not self.errors:
            return None
        norm = math.sqrt(sum(e.norm ** 2 for e in self.errors))
        return math.sqrt(sum(e.error_norm ** 2 for e in self.errors)) / norm if norm else 0.0


def share_weights(packs: Sequence[SkillPack], explicit: Sequence[float] | None) -> list[Weight]:
    """ω per source: the explicit values, else each pack's share of the data |Dk| / Σ|D|."""
    if explicit is not None:
        if len(explicit) != len(packs):
            raise LoraMergeError(f"--weights gives {len(explicit)} values for {len(packs)} packs; give one per pack")
        return [Weight(float(w), "explicit", f"ω = {w:g} (given)") for w in explicit]
    unknown = [p.name for p in packs if p.instances is None]
    if unknown:
        raise LoraMergeError(f"pack {unknown[0]!r} does not record |D|, so its share of the data is unknown: "
                             "pass --weights (one ω per pack)")
    total = sum(p.instances for p in packs)
    if total <= 0:
        raise LoraMergeError("the packs record |D| = 0 in total: pass --weights (one ω per pack)")
    return [Weight(p.instances / total, "data_share", f"ω = |D|/Σ|D| = {p.instances}/{total}") for p in packs]


def merge_packs(req: PackMergeRequest) -> PackMergeResult:
    """Merge ``req.packs`` into one skill pack at ``req.out`` (written to a temporary folder, then renamed)."""
    started = time.perf_counter()
    _check_request(req)
    weights = share_weights(req.packs, req.weights)
    scales = check_effective(req.packs, [w.value for w in weights], "pack merge")
    target = _target(req.base)
    vectors = [w.value * TaskVector.from_pack(p, target, WeightSet.open(req.base) if req.base else None)
               for p, w in zip(req.packs, weights, strict=True)]  # bound by their headers: nothing read yet
    lineage = merged_base(req.packs, req.base, req.allow_foreign_base)
    names = sorted({n for v in vectors for n in v.keys()})
    lowrank = all(isinstance(d, LowRankDelta) for v in vectors for terms in v.terms.values() for _, d in terms)
    if not lowrank and req.rank is not None:
        raise LoraMergeError("--rank applies to LoRA packs; these packs hold dense or bias updates, so the merge is "
                             "a dense pack (leave out --rank, or compress it afterwards with `cli.py extract --rank`)")
    _check_fan_in(req.packs, lowrank)
    out = Path(req.out)
    with staged_output(out, force=req.force, inputs=[p.path for p in req.packs] + [req.base]) as tmp:
        errors = _write_lora(req, vectors, names, tmp) if lowrank else _write_dense(req, vectors, names, tmp)
        instances = used_instances([p.instances for p in req.packs], [w.value for w in weights])
        result = PackMergeResult(out, "lora" if lowrank else "dense", weights, instances, len(names), errors,
                                 scales=scales, allowed=lineage.allowed)
        merged_sketch(lineage, tmp)
        write_manifest(tmp, _manifest(req, result))
    result.seconds = time.perf_counter() - started
    return result


def merged_sketch(lineage: MergedBase, tmp: Path) -> None:
    """The merged pack's sketch of θpre: the sources' own sketches joined, once checked to show one base (none
    when --allow-foreign-base let a source without one, or a disagreement, through: the fold then says so)."""
    if lineage.sketch is not None:
        write_sketch(tmp, lineage.sketch)


def _check_request(req: PackMergeRequest) -> None:
    if len(req.packs) < 2:
        raise LoraMergeError("pack merge needs at least two packs: --adapters a,b[,…]")
    if req.method not in RULES:
        raise LoraMergeError(f"--method {req.method!r}: pack merge supports {', '.join(RULES)}")
    RuleOptions(density=req.density, seed=req.seed)  # its own range checks
    bases = {p.manifest.base_model.shapes_sha256 for p in req.packs if p.manifest and p.manifest.base_model.shapes_sha256}
    if len(bases) > 1:
        raise LoraMergeError("the packs were trained on bases of different layouts (their skill.json base_model "
                             "fingerprints differ); only packs of one base model can be merged")
    if req.rank is not None and req.rank < 1:
        raise LoraMergeError(f"--rank {req.rank}: give a positive rank")
    if req.method == "linear" and req.rank is not None:
        raise LoraMergeError("--rank is for the SVD of non-linear rules; the linear merge is exact at rank Σr")
    for p in req.packs:
        if p.manifest is not None and p.adapter_config is not None and ADAPTER_CONFIG not in p.manifest.files:
            # The merged pack hashes its own config, built from this one: merging would vouch for a file nothing
            # verified (an edited lora_alpha would be baked into the merged factors and hashed as sound).
            raise LoraMergeError(
                f"pack {printable(p.name)!r}: its format-1 manifest does not cover adapter_config.json, so merging "
                "it would record a hash for a config nothing verified. Check its config, then run "
                f"`cli.py pack upgrade {p.path}` (it verifies the whole pack and shows what it vouches for)")
    check_output(req.out, req.force, [p.path for p in req.packs] + [req.base])  # before any pack is read whole


def _target(base: Path | None) -> TargetModel:
    """Bind the packs to θpre's names when given; otherwise to each other, name for name."""
    if base is None:
        return TargetModel.open()
    return TargetModel.from_weights(WeightSet.open(base), read_config(base))


def _check_fan_in(packs: Sequence[SkillPack], lowrank: bool) -> None:
    """A PEFT adapter has one fan_in_fan_out for every module: the sources must agree on it."""
    settings = {bool((p.adapter_config or {}).get("fan_in_fan_out")) for p in packs if p.kind == "lora"}
    if lowrank and len(settings) > 1:
        raise LoraMergeError("the packs disagree on fan_in_fan_out (Conv1D and Linear layers), which one PEFT adapter "
                             "cannot hold; merge them with --base DIR into a dense pack instead")


def _lowrank_terms(vectors: Sequence[TaskVector], name: str) -> list[tuple[float, LowRankDelta]]:
    """(ω, delta) of every source touching ``name``; the sources must adapt it the same way."""
    terms = [(coef, d) for v in vectors for coef, d in v.terms.get(name, ())]
    if len({(d.transpose, d.key_a.endswith("lora_embedding_A")) for _, d in terms}) > 1:
        raise LoraMergeError(f"{name}: adapted as an embedding or Conv1D in one pack and as a linear layer in another")
    return terms


def _merged_factors(req: PackMergeRequest, vectors, name: str) -> tuple[torch.Tensor, torch.Tensor, WeightError | None]:
    """(B, A) of the merged module in PEFT's orientation, and the SVD error when the rule needed one."""
    terms = _lowrank_terms(vectors, name)
    if req.method == "linear":
        pairs = [d.factors() for _, d in terms]
        return torch.cat([b * c for (b, _), (c, _) in zip(pairs, terms, strict=True)], 1), \
            torch.cat([a for _, a in pairs], 0), None
    # The rule sees each whole ωk·ΔWk in the weight's own orientation, exactly as the fold gives it (dare's
    # random mask depends on the layout); PEFT stores Conv1D and embedding factors transposed.
    deltas = [c * d.materialize() for c, d in terms]
    merged = get_rule(req.method)(deltas, RuleOptions(density=req.density, seed=req.seed), name)
    transpose = terms[0][1].transpose
    merged = merged.T if transpose else merged
    rank = min(req.rank or sum(d.source.tensors[d.key_a].shape[0] for _, d in terms), *merged.shape)
    b, a = truncated_factors(merged, rank)
    norm = torch.linalg.matrix_norm(merged).item()
    residual = torch.linalg.matrix_norm(merged - b @ a).item()
    return b, a, WeightError(name, tuple(merged.shape), rank, norm, residual)


def _write_lora(req: PackMergeRequest, vectors, names: list[str], tmp: Path) -> list[WeightError]:
    from peft import LoraConfig

    factors, errors, ranks = {}, [], {}
    for name in names:
        b, a, err = _merged_factors(req, vectors, name)
        module = name.removesuffix(".weight")
        embedding = _lowrank_terms(vectors, name)[0][1].key_a.endswith("lora_embedding_A")
        ka, kb = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
        factors[f"{PEFT_PREFIX}{module}.{ka}"] = a.contiguous()
        factors[f"{PEFT_PREFIX}{module}.{kb}"] = b.contiguous()
        ranks[module] = a.shape[0]
        if err is not None:
            errors.append(err)
    _save_tensors(tmp, factors, ADAPTER_WEIGHTS, "merged_lora")
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {re.escape(m): r for m, r in ranks.items() if r != common}
    first = req.packs[0].adapter_config or {}
    LoraConfig(
        r=common, lora_alpha=common, target_modules=sorted(ranks), lora_dropout=0.0, bias="none",
        fan_in_fan_out=bool(first.get("fan_in_fan_out")), rank_pattern=pattern, alpha_pattern=dict(pattern),
        task_type=first.get("task_type") or "CAUSAL_LM", base_model_name_or_path=first.get("base_model_name_or_path"),
        inference_mode=True,
    ).save_pretrained(tmp)
    return errors


def _write_dense(req: PackMergeRequest, vectors, names: list[str], tmp: Path) -> list[WeightError]:
    rule, opts = get_rule(req.method), RuleOptions(density=req.density, seed=req.seed)
    plan = [PlannedTensor(n, torch.float32, tuple(vectors_shape(vectors, n))) for n in names]
    writer = ShardedWriter(tmp, plan, ONE_FILE, {"lora_merge": __version__, "content": "task_vector"})
    try:
        for n in names:
            deltas = [v.delta(n) for v in vectors if n in v]
            writer.write(n, (deltas[0] if req.method == "linear" and len(deltas) == 1 else rule(deltas, opts, n)))
        writer.finish()
    finally:
        writer.abort()
    (tmp / SINGLE_NAME).rename(tmp / DENSE_WEIGHTS)
    return []  # exact: nothing truncated


def vectors_shape(vectors: Sequence[TaskVector], name: str) -> tuple[int, ...]:
    return next(v.shape(name) for v in vectors if name in v)


def _save_tensors(folder: Path, tensors: dict[str, torch.Tensor], filename: str, content: str) -> None:
    plan = [PlannedTensor(k, torch.float32, tuple(t.shape)) for k, t in tensors.items()]
    writer = ShardedWriter(folder, plan, ONE_FILE, {"lora_merge": __version__, "content": content})
    try:
        for k, t in tensors.items():
            writer.write(k, t.to(torch.float32))
        writer.finish()
    finally:
        writer.abort()
    (folder / SINGLE_NAME).rename(folder / filename)


def _manifest(req: PackMergeRequest, res: PackMergeResult) -> Manifest:
    sources = [{"name": p.name, "path": str(p.path), "omega": w.value, "rule": w.rule, "instances": p.instances,
                "effective_scale": scale, "files": dict(p.manifest.files) if p.manifest else {}}
               for p, w, scale in zip(req.packs, res.weights, res.scales, strict=True)]
    lineage = {"allow_foreign_base": res.allowed} if res.allowed else {}
    first = req.packs[0].manifest
    names = " + ".join(f"{w.value:.3g}·{p.name}" for p, w in zip(req.packs, res.weights, strict=True))
    return Manifest(
        name=req.name, kind=res.kind,
        description=req.description or f"{req.method} merge of {names}",
        base_model=first.base_model if first else Manifest.model_fields["base_model"].default_factory(),
        data=DataInfo(instances=res.instances),
        training=TrainingInfo(method="merge", merge={
            "method": req.method, "density": req.density, "seed": req.seed, "rank": req.rank,
            "svd_relative_error": res.overall_error, "sources": sources, "effective_scale": max(res.scales),
            "instances": "Σ|Dk| over the sources merged with ωk ≠ 0", **lineage,
        }),
    )
