"""Training recipes: YAML files validated by a typed model, any field overridable by a command-line flag.

A recipe may say ``extends: other.yaml`` (a path relative to the recipe) to start from another recipe's
settings; its own keys win. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lora_merge.core.errors import LoraMergeError

Rows = list[dict[str, Any]]

# What ``freeze`` may name: the input embeddings and the output head (lm_head). A tied head is one tensor with the
# embeddings, so freezing either freezes both.
FREEZE_TARGETS = ("embeddings", "lm_head")


class Recipe(BaseModel):
    """Everything one training run needs. Paths are relative to the working directory."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)  # .nan is no setting

    # what and where
    name: str | None = Field(default=None, description="skill / run name (the pack folder under adapters_dir)")
    description: str = ""
    license: str | None = None
    mode: Literal["lora", "qlora", "full"] = "lora"
    strategy: Literal["ptm", "cft", "rt", "general"] = "ptm"
    base: Path | None = Field(default=None, description="pretrained base θpre (a local model folder)")
    general: Path | None = Field(default=None, description="general model θG (the start of CFT)")
    tokenizer: Path | None = Field(default=None, description="tokenizer folder (default: the start model's)")
    data: Path | Rows | None = Field(default=None, description="skill data D (file or rows)")
    general_data: Path | Rows | None = Field(default=None, description="general data G (RT, strategy general)")
    replay: Path | Rows | None = Field(default=None, description="general data mixed back in by CFT")
    replay_ratio: float | None = Field(default=None, ge=0, description="replay rows per skill row (default 1)")
    adapters_dir: Path = Path("adapters")
    out: Path | None = Field(default=None, description="output folder (default adapters_dir/name or runs/models/name)")
    run_dir: Path | None = Field(default=None, description="checkpoints (default runs/train/name)")
    force: bool = False
    resume: bool = False

    # optimisation
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, description="stop after this many steps (-1: run all epochs)")
    lr: float = Field(default=2e-4, gt=0)
    lr_scheduler: str = "linear"
    warmup: float = Field(default=0.03, ge=0, description="< 1: fraction of the steps; ≥ 1: steps")
    weight_decay: float = 0.0
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=8)
    optim: str = "adamw_torch"
    precision: Literal["float32", "bf16", "fp16"] = "float32"
    gradient_checkpointing: bool = False
    completion_only_loss: bool = True
    # Off by default: where length follows the task or layout (a mix of families), grouped batches hold one
    # family each and train differently (docs/results.md, "make demo": the demo's θG and packs changed with it).
    group_by_length: bool = Field(default=False, description="batch rows of similar length (transformers' "
                                  "LengthGroupedSampler): less padding, so fewer positions computed")
    seed: int = 0
    freeze: list[str] = Field(default_factory=list, description="full mode: parameters kept at their start values "
                              f"({', '.join(FREEZE_TARGETS)})")

    # LoRA / QLoRA
    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    rslora: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True

    # bookkeeping
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int = Field(default=200, ge=1)
    save_total_limit: int | None = 2
    progress: bool = True

    @field_validator("data", "general_data", "replay", mode="before")
    @classmethod
    def _path_or_rows(cls, v: Any) -> Any:
        return Path(v) if isinstance(v, str) else v

    @field_validator("freeze", mode="before")
    @classmethod
    def _freeze_targets(cls, v: Any) -> Any:
        # "embeddings", "embeddings,lm_head" and [embeddings, lm_head] all mean a list of targets.
        if v is None:
            return []
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)):
            raise ValueError("give a list of targets, e.g. [embeddings, lm_head]")
        out: list[str] = []
        for item in items:
            name = str(item).strip()
            if name not in FREEZE_TARGETS:
                raise ValueError(f"unknown freeze target {name!r} (known targets: {', '.join(FREEZE_TARGETS)})")
            if name not in out:
                out.append(name)
        return out


FIELDS = tuple(Recipe.model_fields)


def _describe(e: ValidationError, where: str) -> LoraMergeError:
    problems = []
    for err in e.errors()[:6]:
        key = ".".join(str(x) for x in err["loc"] if not isinstance(x, int)) or "(root)"
        key = key.split(".")[0] if err["type"] != "extra_forbidden" else key
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        else:
            problems.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
    hint = "" if not any(p.startswith("unknown key") for p in problems) else f" (known keys: {', '.join(FIELDS)})"
    return LoraMergeError(f"{where}: {'; '.join(problems)}{hint}")


def read_recipe_file(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged key/value mapping of a recipe file and the recipes it extends."""
    path = Path(path)
    if not path.is_file():
        raise LoraMergeError(f"recipe {path} does not exist")
    if path.resolve() in _seen:
        raise LoraMergeError(f"recipe {path}: 'extends' loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LoraMergeError(f"recipe {path}: not valid YAML ({e})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise LoraMergeError(f"recipe {path}: must be a mapping of key: value")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise LoraMergeError(f"recipe {path}: 'extends' must be a path to another recipe")
    return {**read_recipe_file(path.parent / parent, (*_seen, path.resolve())), **raw}


def build_recipe(values: dict[str, Any], where: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(values)
    except ValidationError as e:
        raise _describe(e, where) from None


def load_recipe(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """A recipe from a YAML file (or none), with the given overrides (None values are ignored) applied on top."""
    values = read_recipe_file(path) if path is not None else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_recipe(values, f"recipe {path}" if path else "training settings")
