"""What a training run writes: the skill pack or model folder, with its manifest or model record and card.

:func:`lora_merge.train.run.train_skill` trains; this module records the run
(:class:`RunPlan`, :class:`TrainResult`) and writes its output into the staged
folder :mod:`lora_merge.core.output` gives it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge import __version__
from lora_merge.core.card import write_card
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.model_record import MODEL_RECORD, Cost, DataRecord, Lineage, ModelRecord, write_model_record
from lora_merge.core.output_kinds import PACK, TRAINED_MODEL, OutputKind
from lora_merge.io.fingerprint import fingerprint_model
from lora_merge.io.shards import PlannedTensor, ShardedWriter
from lora_merge.io.tensors import SINGLE_NAME, WeightSet
from lora_merge.pack.provenance import sketch_of, touched_base_weights, write_sketch
from lora_merge.pack.quant_error import quantization_of_model, recorded_residuals
from lora_merge.pack.skillpack import DENSE_WEIGHTS, DataInfo, Manifest, TrainingInfo, load_pack, write_manifest
from lora_merge.train.data import TrainingMix
from lora_merge.train.training_recipe import TrainingRecipe


@dataclass
class RunPlan:
    """Where a run starts, what it reads and where it writes: all checked before any training."""

    name: str
    start: Path
    base: Path | None
    target: Path
    run_dir: Path
    produces: str  # pack | model
    out_origin: str | None = None  # where ``target`` came from, named when --force refuses it
    inputs: tuple[Path | None, ...] = ()  # every path the run reads: never the output, nor inside it

    @property
    def kind(self) -> OutputKind:
        """What ``target`` holds, so --force replaces only an earlier output of this kind."""
        return PACK if self.produces == "pack" else TRAINED_MODEL


@dataclass
class TrainResult:
    out: Path
    produces: str
    strategy: str
    mode: str
    instances: int
    tokens: int
    steps: int
    epochs: float
    wall_seconds: float
    final_loss: float | None
    counts: dict[str, int]
    resumed_from_step: int | None = None
    warnings: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    main_process: bool = True  # False in the other processes of a multi-process launch (they write nothing)


def library_versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers
    import trl

    out = {"lora_merge": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "trl": trl.__version__, "accelerate": accelerate.__version__}
    try:
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    return out


def training_info(r: TrainingRecipe, res: TrainResult, quantization: str | None) -> TrainingInfo:
    lora = r.mode != "full"
    return TrainingInfo(
        method=r.mode, strategy=r.strategy, quantization=quantization, rank=r.rank if lora else None,
        alpha=r.alpha if lora else None, lr=r.lr, epochs=res.epochs, steps=res.steps, seed=r.seed,
        wall_seconds=round(res.wall_seconds, 3), final_loss=res.final_loss,
        target_modules=r.target_modules if lora else None, dropout=r.dropout if lora else None,
        rslora=r.rslora if lora else None, batch_size=r.batch_size, grad_accum=r.grad_accum,
        max_length=r.max_length, group_by_length=r.group_by_length, warmup=r.warmup, lr_scheduler=r.lr_scheduler,
        optim=r.optim, precision=r.precision, tokens=res.tokens, resumed_from_step=res.resumed_from_step,
        freeze=list(r.freeze), library_versions=library_versions(),
    )


def quantization_of(r: TrainingRecipe) -> str | None:
    if r.mode != "qlora":
        return None
    return f"bnb-4bit-{r.quant_type}" + ("-double" if r.double_quant else "")


def write_dense_delta(tmp: Path, model, base_dir: Path, state: dict | None = None) -> None:
    """τ = θD − θpre keyed by the base's weight names, streamed into task_vector.safetensors."""
    base = WeightSet.open(base_dir)
    state = model.state_dict() if state is None else state
    missing = [k for k in base.keys() if k not in state]
    if missing:
        raise LoraMergeError(f"the trained model lacks base weights {missing[:3]}: cannot form θD − θpre")
    keep = [k for k in base.keys() if base.info(k).dtype.startswith(("F", "BF"))]
    plan = [PlannedTensor(k, state[k].dtype, tuple(base.info(k).shape)) for k in keep]
    writer = ShardedWriter(tmp, plan, 1 << 62, {"lora_merge": __version__, "kind": "task_vector"})
    for p in plan:
        writer.write(p.name, (state[p.name].detach().float().cpu() - base.get(p.name).float()).to(p.dtype))
    writer.finish()
    os.replace(tmp / SINGLE_NAME, tmp / DENSE_WEIGHTS)


def data_info(data: TrainingMix, res: TrainResult) -> DataInfo:
    only = next(iter(data.sources.values())) if len(data.sources) == 1 else None
    return DataInfo(instances=res.instances, tokens=res.tokens, sha256=only.sha256 if only else None,
                    path=only.path if only else None)


def pack_manifest(r: TrainingRecipe, plan: RunPlan, data: TrainingMix, res: TrainResult, kind: str) -> Manifest:
    return Manifest(name=plan.name, description=r.description, kind=kind, base_model=fingerprint_model(plan.start),
                    data=data_info(data, res), training=training_info(r, res, quantization_of(r)), license=r.license)


def start_role(folder: Path) -> str | None:
    path = folder / MODEL_RECORD
    try:
        return json.loads(path.read_text()).get("role") if path.is_file() else None
    except (ValueError, AttributeError):
        return None


def write_pack(tmp: Path, r: TrainingRecipe, plan: RunPlan, data: TrainingMix, res: TrainResult, trainer,
               state: dict | None = None) -> dict:
    """PTM: a LoRA pack (the PEFT adapter as saved by PEFT) or a dense pack (θD − θpre), with the sketch of θpre
    where the pack touches it and, for QLoRA, the 4-bit settings and residuals the adapter was trained against."""
    if r.mode == "full":
        write_dense_delta(tmp, trainer.model, plan.start, state)
        kind = "dense"
    else:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        kind = "lora"
    manifest = pack_manifest(r, plan, data, res, kind)
    base = WeightSet.open(plan.start)
    touched = touched_base_weights(load_pack(tmp, verify=False), base, plan.start)
    write_sketch(tmp, sketch_of(base, touched, str(plan.start)))
    quant = quantization_of_model(trainer.model) if r.mode == "qlora" else None
    if quant is not None:
        quant.residual_norms = recorded_residuals(trainer.model, base, touched)
        manifest.training.quantization_config = quant
    return write_manifest(tmp, manifest).model_dump(mode="json")


def write_model_folder(tmp: Path, r: TrainingRecipe, plan: RunPlan, data: TrainingMix, res: TrainResult, trainer,
                       state: dict | None = None) -> dict:
    """CFT / RT / general: a full model folder (LoRA merged into the start model) and its lora_merge.json."""
    from transformers import AutoModelForCausalLM

    if r.mode == "full":
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp, safe_serialization=True, state_dict=state)
    else:
        from peft import PeftModel

        # Merge into a fresh, unquantised copy of the start model (a 4-bit base cannot hold the merged weights).
        trainer.model.save_pretrained(tmp / "adapter", safe_serialization=True)
        start = AutoModelForCausalLM.from_pretrained(plan.start, dtype="auto")
        PeftModel.from_pretrained(start, tmp / "adapter").merge_and_unload().save_pretrained(tmp)
    trainer.processing_class.save_pretrained(tmp)
    sources = {n: {"instances": len(d), "path": d.path, "sha256": d.sha256} for n, d in data.sources.items()}
    record = ModelRecord(
        format_version=1, role=r.strategy, name=plan.name, description=r.description, tool_version=__version__,
        lineage=Lineage(start_model=str(plan.start), start_role=start_role(plan.start),
                        start_fingerprint=fingerprint_model(plan.start).model_dump(mode="json"),
                        base_model=str(plan.base) if plan.base else None),
        data=DataRecord(instances=res.instances, tokens=res.tokens, sources=sources),
        training=training_info(r, res, quantization_of(r)).model_dump(mode="json"),
        cost=Cost(instances=res.instances, steps=res.steps, tokens=res.tokens, wall_seconds=round(res.wall_seconds, 3)),
    )
    data = write_model_record(tmp, record)
    write_card(tmp, record)
    return data
