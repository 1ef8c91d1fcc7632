"""The fold: θ = θG + combine(ω1·τ1, …, ωk·τk), streamed one tensor at a time.

Each of θG's tensors is read from a memory map, the deltas of every pack that
touches it are formed (for LoRA, B·A for that weight only) and combined in
float32, and the result is cast to the output dtype and streamed into
sharded safetensors. Everything is written into a temporary folder beside the
target and renamed into place at the end (:mod:`lora_merge.core.output`), so a
failed or interrupted fold leaves no output behind.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge import __version__
from lora_merge.core.card import write_card
from lora_merge.core.device import resolve_device
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.leftovers import reports_disk_full
from lora_merge.core.model_record import MODEL_RECORD, DataRecord, FoldedPackRecord, ModelRecord, write_model_record
from lora_merge.core.output import check_output, staged_output
from lora_merge.core.output_kinds import MERGED_MODEL
from lora_merge.fold.plan import FoldPlan, PlanTerm, plan_fold, request_inputs
from lora_merge.fold.request import FoldRequest
from lora_merge.fold.resolved_recipe import RECIPE_NAME, rerun_command, resolved_recipe, write_recipe
from lora_merge.fold.stream import stream_fold
from lora_merge.io.numerics import check_folded
from lora_merge.io.placed import PlacedWriter
from lora_merge.io.shards import PlannedTensor, parse_size
from lora_merge.io.tensors import INDEX_NAME, PICKLE_SUFFIXES
from lora_merge.rules.combine import RuleOptions, get_rule

OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files of the general model that are not weights but belong with the merged model.
SKIP_COPY = {INDEX_NAME, "README.md", MODEL_RECORD, RECIPE_NAME}


@dataclass
class FoldResult:
    out: Path
    packs: list[PlanTerm]
    tensors_total: int
    tensors_changed: int
    bytes_written: int
    seconds: float
    shards: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # printed, not recorded (the provenance check of each pack)


def output_dtype(requested: str, stored: torch.dtype) -> torch.dtype:
    if not stored.is_floating_point or requested == "auto":
        return stored
    try:
        return OUTPUT_DTYPES[requested]
    except KeyError:
        raise LoraMergeError(f"--dtype {requested!r}: choose auto, float32, bfloat16 or float16") from None


def fold(req: FoldRequest) -> FoldResult:
    """Fold skill packs into a general model and write the merged model folder."""
    check_output(req.out, req.force, request_inputs(req), kind=MERGED_MODEL,
                 origin=req.out_origin)  # refused before any pack is read
    return fold_plan(plan_fold(req))


@reports_disk_full(lambda plan, *args, **kwargs: plan.request.out.parent)
def fold_plan(plan: FoldPlan) -> FoldResult:
    """The streamed core: θG + rule(ω1·τ1, …, ωk·τk) of a plan, written atomically to its request's ``out``."""
    req, general, target = plan.request, plan.general, plan.target
    warnings = list(plan.warnings)
    started = time.perf_counter()
    out = req.out
    device = resolve_device(req.device)
    rule = get_rule(req.method)
    opts = RuleOptions(density=req.density, seed=req.seed)
    vectors = plan.vectors()
    touched = {k for v in vectors for k in v.keys()}
    # When a pack changes either side of tied embeddings, the output unties them and stores the head.
    untie = target.tied is not None and bool(touched & set(target.tied))
    sources = {n: n for n in general.keys()} | (dict(target.virtual) if untie else {})
    layout = [PlannedTensor(n, output_dtype(req.dtype, general.get(s).dtype), target.shapes[n])
              for n, s in sources.items()]
    # staged: written into a marked temporary folder, renamed into place at the end (lora_merge/core/output.py)
    with staged_output(out, force=req.force, inputs=plan.inputs(), notes=warnings, kind=MERGED_MODEL,
                       origin=req.out_origin) as tmp:
        writer = PlacedWriter(tmp, layout, parse_size(req.max_shard_size), {"lora_merge": __version__},
                              fsync=req.fsync)
        try:
            writer.open()
            # read → merge → write overlapped in bounded memory (lora_merge/fold/stream.py); untouched tensors are copied
            changed = stream_fold(layout, sources, general, vectors, rule, opts, device, writer,
                                  req.method, progress=req.progress,
                                  check=check_folded)  # NaN/Inf, or overflow of the output dtype, named
            shards = writer.finish()
        except BaseException:
            writer.abort()
            raise
        copy_model_files(req.general, tmp)
        edit_config(tmp / "config.json", untie=untie, dtype=None if req.dtype == "auto" else req.dtype)
        if untie:
            warnings.append("a pack changes one side of the tied input/output embeddings: the output unties them "
                            "(tie_word_embeddings = false), as the adapted model computed")
        result_info = FoldResult(out=out, packs=list(plan.terms), tensors_total=len(layout), tensors_changed=changed,
                                 bytes_written=writer.bytes_written, seconds=0.0, shards=shards, warnings=warnings,
                                 notices=list(plan.notices))
        write_merge_records(tmp, plan, result_info)
    result_info.seconds = time.perf_counter() - started
    return result_info


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


def write_merge_records(folder: Path, plan: FoldPlan, res: FoldResult) -> None:
    """lora_merge.json (the model record) and the README card describing the merge."""
    req = plan.request
    recipe, command = resolved_recipe(plan), rerun_command(req.out.absolute())
    record = ModelRecord(
        format_version=1, role="merged", tool_version=__version__, general_model=str(req.general),
        base_model=str(req.base) if req.base else None, method=req.method, density=req.density, seed=req.seed,
        formula=plan.formula, data=DataRecord(instances=plan.general_size),
        packs=[FoldedPackRecord(name=p.name, path=p.path, kind=p.kind, weight=p.weight.value, rule=p.weight.rule,
                                weight_formula=p.weight.formula, instances=p.instances, sha256=p.sha256,
                                tensors=p.tensors, **provenance_fields(p)) for p in res.packs],
        warnings=res.warnings, license=card_license(req.general), recipe=recipe,
        command=command,
    )
    write_model_record(folder, record)
    write_recipe(folder, recipe, command)
    write_card(folder, record)


def provenance_fields(term: PlanTerm) -> dict:
    """A pack's provenance verdict for its lora_merge.json entry (model differences have none)."""
    if term.base_check is None:
        return {}
    def rounded(x: float | None) -> float | None:
        return round(x, 6) if x is not None and math.isfinite(x) else None

    return {"base_check": term.base_check, "base_distance": rounded(term.base_distance),
            "base_cosine": rounded(term.base_cosine)}


def card_license(model: Path) -> str | None:
    """The licence in a model folder's README front matter (a Hub download has one), else None."""
    card = model / "README.md"
    if not card.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        value = ModelCard.load(card).data.license
    except Exception:  # a malformed card only means the licence is unknown
        return None
    return value if isinstance(value, str) else None
