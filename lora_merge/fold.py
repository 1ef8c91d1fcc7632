"""The fold: θ = θG + combine(ω1·τ1, …, ωk·τk), streamed one tensor at a time.

Each of θG's tensors is read from a memory map, the deltas of every pack that
touches it are formed (for LoRA, B·A for that weight only) and combined in
float32, and the result is cast to the output dtype and streamed into
sharded safetensors. Everything is written into a temporary folder beside the
target and renamed into place at the end, so a failed or interrupted fold
leaves no output behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge import __version__
from lora_merge.combine import VARIANT_METHODS, RuleOptions, get_rule
from lora_merge.errors import LoraMergeError
from lora_merge.fingerprint import fingerprint_model, read_config
from lora_merge.leftovers import clean_leftovers, reports_disk_full
from lora_merge.numerics import check_folded, guard_pack_reads
from lora_merge.placed import PlacedWriter
from lora_merge.skillpack import DEFAULT_REGISTRY, SkillPack, load_pack, publish_folder, resolve_pack
from lora_merge.stream import stream_fold
from lora_merge.task_vector import TargetModel, TaskVector
from lora_merge.tensors import INDEX_NAME, PICKLE_SUFFIXES, PlannedTensor, WeightSet, parse_size
from lora_merge.weights import GENERAL_MANIFEST, Weight, choose_weights, general_size_from_folder

OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files of the general model that are not weights but belong with the merged model.
SKIP_COPY = {INDEX_NAME, "README.md", GENERAL_MANIFEST}


@dataclass
class FoldRequest:
    """Everything `cli.py fold` can say, as one typed value."""

    general: Path
    packs: Sequence[str]
    out: Path
    adapters_dir: Path = DEFAULT_REGISTRY
    weights: Sequence[float] | None = None
    general_size: int | None = None
    base: Path | None = None
    cft: Path | None = None  # wise_ft: θG continued on D
    method: str = "linear"
    density: float = 1.0
    seed: int = 0
    dtype: str = "auto"
    device: str = "cpu"
    max_shard_size: str | int = "5GB"
    force: bool = False
    verify: bool = True
    progress: bool = True
    fsync: bool = True  # shards reach the disk before the folder is renamed into place


@dataclass
class FoldedPack:
    name: str
    path: str
    kind: str
    weight: Weight
    sha256: dict[str, str]
    instances: int | None
    tensors: int


@dataclass
class FoldResult:
    out: Path
    packs: list[FoldedPack]
    tensors_total: int
    tensors_changed: int
    bytes_written: int
    seconds: float
    shards: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise LoraMergeError(f"output {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise LoraMergeError(f"output {out} exists and is not a folder")


def load_packs(names: Sequence[str], adapters_dir: Path, verify: bool = True) -> list[SkillPack]:
    if not names:
        raise LoraMergeError("no skill packs given: pass --adapters NAME[,NAME…]")
    packs = [load_pack(resolve_pack(n, adapters_dir), verify=verify) for n in names]
    seen: set[str] = set()
    for p in packs:
        if str(p.path.resolve()) in seen:
            raise LoraMergeError(f"pack {p.name!r} is listed twice")
        seen.add(str(p.path.resolve()))
    return packs


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoraMergeError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise LoraMergeError(f"--device {device!r}: use cpu or cuda")
    return torch.device(device)


def output_dtype(requested: str, stored: torch.dtype) -> torch.dtype:
    if not stored.is_floating_point or requested == "auto":
        return stored
    try:
        return OUTPUT_DTYPES[requested]
    except KeyError:
        raise LoraMergeError(f"--dtype {requested!r}: choose auto, float32, bfloat16 or float16") from None


def fold(req: FoldRequest) -> FoldResult:
    """Fold skill packs into a general model and write the merged model folder."""
    check_output(Path(req.out), req.force)
    if req.method in VARIANT_METHODS:  # linear_interp / wise_ft build their own vectors
        from lora_merge.variants import fold_variant

        return fold_variant(req)
    get_rule(req.method), RuleOptions(density=req.density, seed=req.seed)  # fail before any pack is read
    if req.cft is not None:
        raise LoraMergeError(f"--cft is only used by --method wise_ft, not {req.method}")
    general = WeightSet.open(req.general)
    base = WeightSet.open(req.base) if req.base else None
    packs = load_packs(req.packs, Path(req.adapters_dir), verify=req.verify)
    g_size = req.general_size if req.general_size is not None else general_size_from_folder(req.general)
    weights = choose_weights([p.name for p in packs], [p.instances for p in packs], req.weights, g_size)
    target = TargetModel.from_weights(general, read_config(Path(req.general)))
    warnings = compatibility_warnings(packs, Path(req.general), general)  # before binding: the clearer error
    terms = scaled_pack_terms(packs, weights, target, base)
    return fold_vectors(req, general, target, terms, g_size, warnings)


def scaled_pack_terms(
    packs: Sequence[SkillPack], weights: Sequence[Weight], target: TargetModel, base: WeightSet | None
) -> list[tuple[TaskVector, FoldedPack]]:
    """ωk·τk for each pack, bound to the target's weights, with the record the model card shows."""
    terms = []
    for p, w in zip(packs, weights):
        tv = guard_pack_reads(TaskVector.from_pack(p, target, base), p.name)  # NaN/Inf refused on first read
        record = FoldedPack(p.name, str(p.path), p.kind, w, p.manifest.files if p.manifest else {}, p.instances,
                            len(tv.keys()))
        terms.append((w.value * tv, record))
    return terms


@reports_disk_full(lambda req, *args, **kwargs: Path(req.out).parent)
def fold_vectors(
    req: FoldRequest,
    general: WeightSet,
    target: TargetModel,
    terms: Sequence[tuple[TaskVector, FoldedPack]],
    general_size: int | None,
    warnings: list[str],
    formula: str | None = None,
) -> FoldResult:
    """The streamed core: θG + rule(already ω-scaled vectors), written atomically to ``req.out``.

    ``terms`` pairs each scaled task vector with the record the card shows for it.
    Variants (linear_interp, wise_ft) reach their formulas by passing the right vectors.
    """
    started = time.perf_counter()
    out = Path(req.out)
    check_output(out, req.force)
    warnings.extend(clean_leftovers(out.parent, out.name))  # what killed runs left beside the output
    device = resolve_device(req.device)
    rule = get_rule(req.method)
    opts = RuleOptions(density=req.density, seed=req.seed)
    vectors = [tv for tv, _ in terms]
    touched = {k for v in vectors for k in v.keys()}
    # When a pack changes either side of tied embeddings, the output unties them and stores the head.
    untie = target.tied is not None and bool(touched & set(target.tied))
    sources = {n: n for n in general.keys()} | (dict(target.virtual) if untie else {})
    plan = [PlannedTensor(n, output_dtype(req.dtype, general.get(s).dtype), target.shapes[n])
            for n, s in sources.items()]
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writer = PlacedWriter(tmp, plan, parse_size(req.max_shard_size), {"lora_merge": __version__}, fsync=req.fsync)
    try:
        writer.open()
        # read → merge → write overlapped in bounded memory (lora_merge/stream.py); untouched tensors are copied as bytes
        changed = stream_fold(plan, sources, general, vectors, rule, opts, device, writer, linear=req.method == "linear",
                              progress=req.progress,
                              check=check_folded)  # NaN/Inf, or overflow of the output dtype, named
        shards = writer.finish()
        copy_model_files(Path(req.general), tmp)
        edit_config(tmp / "config.json", untie=untie, dtype=None if req.dtype == "auto" else req.dtype)
        if untie:
            warnings.append("a pack changes one side of the tied input/output embeddings: the output unties them "
                            "(tie_word_embeddings = false), as the adapted model computed")
        result_info = FoldResult(
            out=out,
            packs=[rec for _, rec in terms],
            tensors_total=len(plan),
            tensors_changed=changed,
            bytes_written=writer.bytes_written,
            seconds=0.0,
            shards=shards,
            warnings=warnings,
        )
        write_merge_records(tmp, req, result_info, general_size, formula)
        publish_folder(tmp, out, force=req.force)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result_info.seconds = time.perf_counter() - started
    return result_info


def compatibility_warnings(packs: Sequence[SkillPack], general_dir: Path, general: WeightSet) -> list[str]:
    """Refuse packs from another model family; warn when the base differs but the layout fits (or a pack's
    manifest is of an old format)."""
    out = [w for p in packs for w in p.warnings]
    recorded = [p for p in packs if p.manifest and p.manifest.base_model.shapes_sha256]
    if not recorded:
        return out
    fp = fingerprint_model(general_dir, general)
    for p in recorded:
        bfp = p.manifest.base_model
        diffs = bfp.differences(fp)
        if bfp.shapes_sha256 == fp.shapes_sha256 and not diffs:
            continue
        # Tied or untied embeddings and the class name do not change what a delta means; the rest is the family.
        family = [d for d in diffs if d.split(":")[0] not in ("tie_word_embeddings", "architectures", "tensor names or shapes differ")]
        if family and bfp.shapes_sha256 != fp.shapes_sha256:
            raise LoraMergeError(
                f"pack {p.name!r} was trained on {bfp.name_or_path or 'another model'}, which differs from the "
                f"general model {general_dir} ({'; '.join(family[:3])}); fold it into a model of the same family"
            )
        out.append(f"pack {p.name!r} was trained on {bfp.name_or_path}, a different model than {general_dir} with "
                   f"a compatible layout ({'; '.join(diffs[:3])}); folded anyway, check the result")
    return out


def edit_config(path: Path, untie: bool, dtype: str | None) -> None:
    """Record what the fold changed in config.json: untied embeddings, a new weight dtype."""
    if not path.is_file() or not (untie or dtype):
        return
    cfg = json.loads(path.read_text())
    sections = [cfg] + ([cfg["text_config"]] if isinstance(cfg.get("text_config"), dict) else [])
    for section in sections:
        if untie:
            section["tie_word_embeddings"] = False
        if dtype:
            section["dtype"] = dtype  # transformers 5 loads dtype="auto" from here
            section.pop("torch_dtype", None)
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def copy_model_files(src: Path, dst: Path) -> None:
    """Copy config, tokenizer, generation config, chat template… (never weights or pickles)."""
    for f in src.iterdir():
        if not f.is_file() or f.is_symlink():
            continue
        if f.suffix == ".safetensors" or f.suffix in PICKLE_SUFFIXES or f.name in SKIP_COPY:
            continue
        shutil.copy2(f, dst / f.name)


def write_merge_records(folder: Path, req: FoldRequest, res: FoldResult, general_size: int | None,
                        formula: str | None = None) -> None:
    """README model card and lora_merge.json describing the merge."""
    from lora_merge.card import merged_card

    record = {
        "format_version": 1,
        "role": "merged",
        "tool_version": __version__,
        "general_model": str(req.general),
        "base_model": str(req.base) if req.base else None,
        "method": req.method,
        "density": req.density,
        "seed": req.seed,
        "formula": formula or ("θ = θG + Σk ωk·τk" if req.method == "linear" else f"θ = θG + {req.method}(ω1·τ1, …, ωk·τk)"),
        "data": {"instances": general_size},
        "packs": [
            {
                "name": p.name,
                "path": p.path,
                "kind": p.kind,
                "weight": p.weight.value,
                "rule": p.weight.rule,
                "weight_formula": p.weight.formula,
                "instances": p.instances,
                "sha256": p.sha256,
                "tensors": p.tensors,
            }
            for p in res.packs
        ],
        "warnings": res.warnings,
    }
    (folder / GENERAL_MANIFEST).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    (folder / "README.md").write_text(merged_card(record))
