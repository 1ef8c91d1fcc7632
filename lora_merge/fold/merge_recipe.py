"""Merge recipes: a fold written down as YAML (`fold --config merge.yml`), and every fold's resolved recipe.

A recipe names the general model, the packs with their ω, the rule and its settings; it is validated by
:class:`MergeRecipe` (unknown keys refused by name) and turned into a :class:`FoldRequest`, with options
given on the command line taking precedence. Every fold writes ``lora_merge_recipe.yml`` into its output:
absolute paths, each pack's ω, the rule that chose it and the sha256 of its files, and the command that
reruns it. Rerunning that file folds the same packs at the same ω (explicitly), so the output is
bit-identical; a pack whose files changed since is refused (checked in the plan).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lora_merge import __version__
from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.plan import FoldPlan, FoldRequest
from lora_merge.pack.skillpack import HASHED_FILES, sha256_file

RECIPE_NAME = "lora_merge_recipe.yml"


class RecipeAdapter(BaseModel):
    """One pack of a recipe: a name under ``adapters_dir`` or a folder, its ω (optional) and recorded hashes."""

    model_config = ConfigDict(extra="forbid")
    pack: str = Field(min_length=1)
    weight: float | None = Field(default=None, allow_inf_nan=False)
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
    cft_weight: float | None = Field(default=None, allow_inf_nan=False)  # wise_ft's one ω
    method: str = "linear"
    density: float = Field(default=1.0, allow_inf_nan=False)
    seed: int = 0
    general_size: int | None = Field(default=None, gt=0)
    rule: Literal["auto", "size"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_shard_size: str | int = "5GB"
    out: str | None = None
    allow_foreign_base: bool = False  # fold packs whose base θG does not descend from (recorded when a fold did)
    tool_version: str | None = None  # recorded: the lora_merge that wrote the recipe


def describe(e: ValidationError, where: str) -> LoraMergeError:
    """A pydantic error as one line naming each bad key (``adapters.0.wieght: unknown key``)."""
    problems = []
    for err in e.errors()[:6]:
        key = ".".join(str(x) for x in err["loc"]) or "(root)"
        problems.append(f"{key}: unknown key" if err["type"] == "extra_forbidden" else f"{key}: {err['msg']}")
    known = ", ".join(MergeRecipe.model_fields)
    return LoraMergeError(f"{where}: {'; '.join(problems)} (known keys: {known}; adapters: pack, weight)")


def load_merge_recipe(path: str | os.PathLike) -> MergeRecipe:
    """Read and validate a merge recipe file."""
    path = Path(path)
    if not path.is_file():
        raise LoraMergeError(f"--config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LoraMergeError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise LoraMergeError(f"--config {path}: must be a mapping of key: value (general:, adapters:, …)")
    try:
        return MergeRecipe.model_validate(raw)
    except ValidationError as e:
        raise describe(e, f"merge recipe {path}") from None


def recipe_request(recipe: MergeRecipe, **given: Any) -> FoldRequest:
    """The fold request of ``recipe``, with ``given`` (options set on the command line) taking precedence.

    ``given`` uses FoldRequest's field names; ``packs`` given replaces the recipe's adapters and their ω.
    """
    weights = [a.weight for a in recipe.adapters]
    if any(w is not None for w in weights) and any(w is None for w in weights):
        raise LoraMergeError("merge recipe: give `weight` for every adapter or for none (then ω comes from --rule)")
    values: dict[str, Any] = {
        "general": recipe.general, "packs": [a.pack for a in recipe.adapters], "out": recipe.out,
        "adapters_dir": recipe.adapters_dir, "base": recipe.base, "cft": recipe.cft, "method": recipe.method,
        "density": recipe.density, "seed": recipe.seed, "general_size": recipe.general_size,
        "weight_rule": recipe.rule, "dtype": recipe.dtype, "max_shard_size": recipe.max_shard_size,
        "allow_foreign_base": recipe.allow_foreign_base,
        "weights": [recipe.cft_weight] if recipe.cft_weight is not None else
        (weights if weights and weights[0] is not None else None),
        "expected_sha256": [a.sha256 for a in recipe.adapters] if any(a.sha256 for a in recipe.adapters) else None,
    }
    if "packs" in given:
        values["weights"] = values["expected_sha256"] = None
    values.update(given)
    if not values.get("out"):
        raise LoraMergeError("no output folder: pass --out DIR (or `out:` in the recipe)")
    for key in ("general", "out", "adapters_dir", "base", "cft"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return FoldRequest(**values)


def file_hashes(folder: Path, recorded: dict[str, str]) -> dict[str, str]:
    """sha256 of a pack's hashed files: its verified manifest's, else computed (a plain PEFT adapter)."""
    if recorded:
        return dict(recorded)
    return {f: sha256_file(folder / f, folder) for f in HASHED_FILES if (folder / f).is_file()}


def resolved_recipe(plan: FoldPlan) -> dict[str, Any]:
    """Everything the fold used, as a recipe that reruns it: absolute paths, each ω explicit with its rule."""
    req = plan.request
    pack_terms = plan.terms[:len(plan.packs)]
    recipe: dict[str, Any] = {"general": str(Path(req.general).absolute())}
    if pack_terms:
        recipe["adapters"] = [{"pack": str(Path(t.path).absolute()), "weight": t.weight.value,
                               "rule": t.weight.rule, "sha256": file_hashes(Path(t.path), t.sha256)}
                              for t in pack_terms]
    for key in ("base", "cft"):
        if getattr(req, key) is not None:
            recipe[key] = str(Path(getattr(req, key)).absolute())
    if req.method == "wise_ft":
        recipe["cft_weight"] = plan.terms[0].weight.value
    recipe.update(method=req.method, density=req.density, seed=req.seed, dtype=req.dtype,
                  max_shard_size=req.max_shard_size)
    if plan.general_size is not None:
        recipe["general_size"] = plan.general_size
    if req.allow_foreign_base:  # the rerun must be allowed what this fold was
        recipe["allow_foreign_base"] = True
    recipe["tool_version"] = __version__
    return recipe


def write_recipe(folder: Path, recipe: dict[str, Any], command: str) -> Path:
    """``lora_merge_recipe.yml`` (:func:`resolved_recipe`) in ``folder``, its first line the command that reruns it."""
    text = f"# {command}\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    path = Path(folder) / RECIPE_NAME
    path.write_text(text, encoding="utf-8")
    return path


def rerun_command(out: Path) -> str:
    """The command that refolds ``out`` from its recipe into a new folder beside it."""
    return (f"lora-merge fold --config {shlex.quote(str(out / RECIPE_NAME))} "
            f"--out {shlex.quote(str(out.with_name(out.name + '-rerun')))}")
