"""Merge recipes: a fold written down as YAML (`fold --config merge.yml`).

A recipe names the general model, the packs with their ω, the rule and its settings; it is validated by
:class:`MergeRecipe` (unknown keys refused by name) and turned into a :class:`FoldRequest` by
:func:`lora_merge.fold.request.fold_request`, options given on the command line taking precedence. The recipe
every fold writes into its output (:mod:`lora_merge.fold.resolved_recipe`) is a merge recipe too, with every
value made explicit, so it reruns the fold.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_merge.core.yaml_model import load_yaml_model


class RecipeAdapter(BaseModel):
    """One pack of a recipe: a name under ``adapters_dir`` or a folder, its ω (optional) and recorded hashes."""

    model_config = ConfigDict(extra="forbid")
    pack: str = Field(min_length=1)
    weight: float | None = None  # checked with --weights' check when the request is built (fold/request.py)
    rule: str | None = None  # recorded: the rule that chose ω in the fold that wrote the recipe
    sha256: dict[str, str] | None = None  # recorded: the fold refuses the pack if a file no longer matches


class MergeRecipe(BaseModel):
    """``fold --config`` YAML: the fold's options as keys (command-line options override them)."""

    model_config = ConfigDict(extra="forbid")
    general: str = Field(min_length=1)
    adapters: list[RecipeAdapter] = []
    adapters_dir: str = "adapters"
    base: str | None = None
    cft: str | None = None
    cft_weight: float | None = None  # wise_ft's one ω (checked as `weight` is)
    method: str = "linear"
    density: float = Field(default=1.0, allow_inf_nan=False)
    seed: int = 0
    general_size: int | None = Field(default=None, gt=0)
    rule: Literal["auto", "size"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_shard_size: str | int = "5GB"
    out: str | None = None
    allow_foreign_base: bool = False  # fold packs whose base θG does not descend from (recorded when a fold did)
    model_sha256: dict[str, str] | None = None  # recorded: general/base/cft identities; a changed model is refused
    tool_version: str | None = None  # recorded: the lora_merge that wrote the recipe


def load_merge_recipe(path: str | os.PathLike) -> MergeRecipe:
    """Read and validate a merge recipe file (``fold --config``): unknown keys and bad values named by key."""
    return load_yaml_model(path, MergeRecipe, "merge recipe")
