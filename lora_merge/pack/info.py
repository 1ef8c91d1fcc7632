"""A readable summary of a skill pack: manifest, adapter settings, sizes and hashes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.io.tensors import read_header
from lora_merge.pack.files import check_pack_file
from lora_merge.pack.skillpack import BASE_SKETCH, SkillPack, load_pack


@dataclass
class PackSummary:
    name: str
    path: Path
    kind: str
    base_model: str | None
    instances: int | None
    rank: int | None
    alpha: float | None
    rslora: bool
    target_modules: list[str] | str | None
    modules_to_save: list[str] | None
    tensors: int
    parameters: int
    bytes_on_disk: int
    hashes: list[tuple[str, bool, str]] = field(default_factory=list)
    manifest: dict | None = None
    sketched: int | None = None  # weights of the base sampled in base_sketch.safetensors; None: no sketch


def sketched_weights(pack: SkillPack) -> int | None:
    """How many base weights the pack's sketch samples (its header only), or None without a sketch."""
    path = pack.path / BASE_SKETCH
    if not os.path.lexists(path):
        return None
    check_pack_file(path, pack.path)  # a regular file inside the pack (never a fifo, a device or a link out)
    try:
        return len(json.loads(read_header(path)[1]["weights"]))
    except (KeyError, ValueError, TypeError):
        return 0  # unreadable: the fold says why (provenance.read_sketch)


def summarize_pack(path: str | Path, verify: bool = False) -> PackSummary:
    """Read a pack (without refusing it on a bad hash: the summary reports it)."""
    pack: SkillPack = load_pack(path, verify=verify)
    src = pack.source()
    cfg = pack.adapter_config or {}
    m = pack.manifest
    return PackSummary(
        name=pack.name,
        path=pack.path,
        kind=pack.kind,
        base_model=(m.base_model.name_or_path if m else None) or cfg.get("base_model_name_or_path"),
        instances=pack.instances,
        rank=cfg.get("r", m.training.rank if m else None) if cfg else (m.training.rank if m else None),
        alpha=cfg.get("lora_alpha") if cfg else None,
        rslora=bool(cfg.get("use_rslora")),
        target_modules=cfg.get("target_modules"),
        modules_to_save=cfg.get("modules_to_save"),
        tensors=len(src.tensors),
        parameters=sum(t.numel for t in src.tensors.values()),
        bytes_on_disk=sum(f.stat().st_size for f in pack.path.rglob("*") if f.is_file()),
        hashes=pack.verify(),
        manifest=m.model_dump(mode="json") if m else None,
        sketched=sketched_weights(pack),
    )
