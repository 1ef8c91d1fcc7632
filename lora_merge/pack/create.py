"""`pack create`: any PEFT LoRA adapter (Unsloth, axolotl, TRL…) or dense τ file made into a skill pack.

The adapter's files are copied into a staged pack folder (:mod:`lora_merge.core.output`: the source is never
modified, an output overlapping it is refused), and the copies — what will be published — are checked as
a fold checks a pack: adapter_config.json validated, safetensors only (a pickle is refused), DoRA refused,
every adapter key bound (to ``--base`` when given, so a shape or key mismatch shows now), every value
finite. With ``--base`` the pack gets a sketch of it (:mod:`lora_merge.pack.provenance`); without, the fold cannot
check that its general model descends from the base, and says so. Then the manifest (format 2: hashes, |D|,
the base's fingerprint) and the card are written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.names import check_name
from lora_merge.core.output import check_output, staged_output
from lora_merge.core.output_kinds import PACK
from lora_merge.io.fingerprint import Fingerprint, fingerprint_model, read_config
from lora_merge.io.numerics import scan_file
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.files import check_pack_file
from lora_merge.pack.provenance import sketch_pack
from lora_merge.pack.skillpack import (
    ADAPTER_WEIGHTS,
    BASE_SKETCH,
    DENSE_WEIGHTS,
    HASHED_FILES,
    MANIFEST_NAME,
    DataInfo,
    Manifest,
    SkillPack,
    TrainingInfo,
    load_pack,
    write_manifest,
)
from lora_merge.pack.task_vector import TargetModel, TaskVector


@dataclass
class CreateRequest:
    """Everything `pack create` can say."""

    source: Path  # a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or a dense τ folder
    name: str
    instances: int  # |D|
    adapters_dir: Path = Path("adapters")
    out: Path | None = None  # default: adapters_dir / name
    base: Path | None = None  # θpre: fingerprint recorded, adapter bound to it now
    description: str = ""
    license: str | None = None
    force: bool = False


def create_pack(req: CreateRequest) -> tuple[Path, Manifest]:
    """Write a new skill pack from ``req.source``; returns its folder and manifest."""
    check_name(req.name, "--name")
    if type(req.instances) is not int or req.instances < 1:
        raise LoraMergeError(f"--instances {req.instances!r}: |D| is a positive whole number of training instances")
    source = Path(req.source)
    if not source.is_dir():
        raise LoraMergeError(f"{source}: no such adapter folder")
    if os.path.lexists(source / MANIFEST_NAME):
        raise LoraMergeError(f"{source} is already a skill pack ({MANIFEST_NAME}); fold it as is, or `pack import` it")
    out = Path(req.out) if req.out is not None else Path(req.adapters_dir) / req.name
    inputs = [source, req.base]
    check_output(out, req.force, inputs, kind=PACK)
    load_pack(source, verify=False)  # refused here (pickle, no weights, bad config) before anything is created
    with staged_output(out, force=req.force, inputs=inputs, kind=PACK) as tmp:
        for fname in HASHED_FILES:
            if fname != BASE_SKETCH and os.path.lexists(source / fname):  # a sketch is made here from --base only
                check_pack_file(source / fname, source)  # a regular file inside the adapter folder
                shutil.copyfile(source / fname, tmp / fname)
        pack = load_pack(tmp, verify=False)  # the copies are what is checked and published
        check_binds(pack, req.base)
        for fname in (ADAPTER_WEIGHTS, DENSE_WEIGHTS):
            if (tmp / fname).is_file():
                bad = list(scan_file(tmp / fname, req.name))
                if bad:
                    listed = "; ".join(f"{k}: {d}" for k, d in bad[:3])
                    raise LoraMergeError(f"{source / fname} holds non-finite values ({listed}); it cannot be folded")
        if req.base is not None:
            sketch_pack(tmp, Path(req.base))  # θpre sampled where the pack touches it (pack/provenance.py)
        manifest = write_manifest(tmp, Manifest(
            name=req.name, kind=pack.kind, description=req.description,
            base_model=base_fingerprint(req.base, pack), data=DataInfo(instances=req.instances),
            training=training_info(pack), license=req.license,
        ))
    return out, manifest


def check_binds(pack: SkillPack, base: Path | None) -> None:
    """Bind the pack as the fold will: to ``base``'s layout when given, else to its own names (DoRA, odd keys,
    factors that do not multiply and rank mismatches are refused either way)."""
    if base is None:
        TaskVector.from_pack(pack, TargetModel.open())
        return
    weights = WeightSet.open(base)
    TaskVector.from_pack(pack, TargetModel.from_weights(weights, read_config(Path(base))), weights)


def base_fingerprint(base: Path | None, pack: SkillPack) -> Fingerprint:
    """θpre's fingerprint from --base, else the base named in adapter_config.json (name only)."""
    if base is not None:
        return fingerprint_model(base)
    named = (pack.adapter_config or {}).get("base_model_name_or_path")
    return Fingerprint(name_or_path=named if isinstance(named, str) and named else None)


def training_info(pack: SkillPack) -> TrainingInfo:
    """What the adapter config says about training (rank, alpha); the rest is unknown for an imported adapter."""
    cfg = pack.lora_config
    if cfg is None:
        return TrainingInfo(method="full")
    return TrainingInfo(method="lora", rank=cfg.r, alpha=float(cfg.lora_alpha))
