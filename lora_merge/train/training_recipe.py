"""Training recipes: YAML files validated by a typed model, any field overridable by a command-line flag.

A recipe may say ``extends: other.yaml`` (a path relative to the recipe) to start from another recipe's
settings; its own keys win. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.yaml_model import load_yaml_model, read_yaml_mapping, validate_model

Rows = list[dict[str, Any]]

# What ``freeze`` may name: the input embeddings and the output head (lm_head). A tied head is one tensor with the
# embeddings, so freezing either freezes both.
FREEZE_TARGETS = ("embeddings", "lm_head")


class TrainingRecipe(BaseModel):
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
    # family each and train differently (docs/results.md, appendix: the demo's θG and packs changed with it).
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

    # Where `out` came from (--out, or `out:` in the recipe file), named when --force refuses the folder; set by
    # load_training_recipe, not a recipe key.
    _out_origin: str | None = PrivateAttr(default=None)

    @property
    def out_origin(self) -> str | None:
        """``--out`` or ``\`out:\` in the recipe FILE`` when ``out`` was given, else None."""
        return self._out_origin if self.out is not None else None

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


FIELDS = tuple(TrainingRecipe.model_fields)


def _with_parents(path: Path, raw: dict[str, Any], seen: tuple[Path, ...]) -> dict[str, Any]:
    """``raw`` (the mapping of recipe ``path``) on top of the recipe its ``extends:`` names, if any."""
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise LoraMergeError(f"recipe {path}: 'extends' must be a path to another recipe")
    return {**read_training_recipe_file(path.parent / parent, (*seen, path.resolve())), **raw}


def read_training_recipe_file(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged key/value mapping of a recipe file and the recipes it extends."""
    path = Path(path)
    if path.resolve() in _seen:
        raise LoraMergeError(f"recipe {path}: 'extends' loops back to itself")
    return _with_parents(path, read_yaml_mapping(path, "recipe", FIELDS), _seen)


def build_training_recipe(values: dict[str, Any], where: str = "recipe") -> TrainingRecipe:
    """A recipe from key/value settings; a mistake is one LoraMergeError starting with ``where``."""
    return validate_model(values, TrainingRecipe, where)


def load_training_recipe(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainingRecipe:
    """A recipe from a YAML file (or none), with the given overrides (None values are ignored) applied on top."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if path is None:
        recipe = build_training_recipe(given, "training settings")
    else:
        recipe = load_yaml_model(path, TrainingRecipe, "recipe",
                                 lambda raw: {**_with_parents(Path(path), raw, ()), **given})
    recipe._out_origin = "--out" if "out" in given else f"`out:` in the recipe {path} (or a recipe it extends)"
    return recipe
