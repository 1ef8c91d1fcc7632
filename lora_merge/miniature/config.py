"""The settings of the miniature study (configs/demo.yaml), validated; ``quick:`` holds the --quick overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.yaml_model import known_keys, load_yaml_model, validate_model
from lora_merge.miniature.pretrain import ModelShape, PretrainSettings
from lora_merge.miniature.world import WorldSizes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tuning(_Strict):
    """One kind of fine-tune (passed on to lora_merge.train.training_recipe.TrainingRecipe)."""

    lr: float = Field(gt=0)
    epochs: float = Field(gt=0)
    batch_size: int = Field(default=16, ge=1)
    warmup: float = Field(default=0.05, ge=0)
    # Training recipe key ``freeze`` for this section's full-parameter fine-tunes (LoRA packs train no embeddings anyway).
    freeze: list[Literal["embeddings", "lm_head"]] = []


class LoraSettings(_Strict):
    rank: int = Field(default=4, ge=1)
    alpha: float = Field(default=8.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class MergeSettings(_Strict):
    grid: list[float] = [0.2, 0.4, 0.6, 0.8, 1.0]
    three_skill_methods: list[str] = ["linear", "ties", "dare_linear"]
    density: float = Field(default=0.5, gt=0, le=1)


class EvalSettings(_Strict):
    batch_size: int = Field(default=64, ge=1)
    max_new_tokens: int = Field(default=16, ge=1)


class DemoConfig(_Strict):
    seed: int = 0
    out: Path = Path("runs/miniature")
    adapters_dir: Path = Path("runs/miniature/adapters")
    cache_dir: Path = Path("runs/cache")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (default: torch's own choice)")
    world: WorldSizes = WorldSizes()
    model: ModelShape = ModelShape()
    pretrain: PretrainSettings = PretrainSettings()
    general: Tuning = Tuning(lr=1e-3, epochs=1)
    skill: Tuning = Tuning(lr=1e-3, epochs=2)
    skill_lora_lr: float = Field(default=2e-3, gt=0)
    lora: LoraSettings = LoraSettings()
    replay_ratio: float = Field(default=1.0, ge=0)
    merge: MergeSettings = MergeSettings()
    eval: EvalSettings = EvalSettings()


def _dataclass_fields(values: dict[str, Any], where: str) -> dict[str, Any]:
    """YAML mappings for the world/model/pretrain sections become their frozen dataclasses."""
    out = dict(values)
    for key, cls in (("world", WorldSizes), ("model", ModelShape), ("pretrain", PretrainSettings)):
        if key in out and isinstance(out[key], dict):
            known = [f.name for f in dataclasses.fields(cls)]
            unknown = [k for k in out[key] if k not in known]
            if unknown:  # worded as the validation of every other section words it
                raise LoraMergeError(f"{where}: " + "; ".join(f"{key}.{k}: unknown key" for k in unknown)
                                     + f" ({known_keys(known, key)})")
            out[key] = cls(**out[key])
    return out


def _deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Path | None, quick: bool = False, overrides: dict[str, Any] | None = None) -> DemoConfig:
    """Read configs/demo.yaml (or defaults), apply its ``quick:`` section when asked, then ``overrides``."""
    where = f"miniature config {path}" if path is not None else "miniature settings"

    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        quick_section = raw.pop("quick", {}) or {}
        if quick:
            raw = _deep_update(raw, quick_section)
        return _dataclass_fields(_deep_update(raw, overrides or {}), where)

    if path is None:
        return validate_model(prepare({}), DemoConfig, where)
    return load_yaml_model(path, DemoConfig, "miniature config", prepare)
