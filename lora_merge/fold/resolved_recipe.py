"""The resolved recipe every fold writes (``lora_merge_recipe.yml``): the fold made explicit, so it reruns.

Absolute paths, each pack's ω and the rule that chose it, the sha256 of every file of the pack that changes the
result (of the bytes the fold read, whatever the pack's manifest covers: a format-1 pack's config too), the
identity of the general model (and θpre, θCFT) it folded into (:func:`lora_merge.io.fingerprint.weights_identity`:
cheap for any size), and as its first line the command that reruns it. It is a merge recipe (:class:`lora_merge.fold.merge_recipe.MergeRecipe`), so rerunning
it folds the same packs at the same ω (explicitly) and the output is bit-identical; a pack whose files changed
since is refused (checked in the plan).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from lora_merge import __version__
from lora_merge.fold.plan import FoldPlan
from lora_merge.io.fingerprint import weights_identity

RECIPE_NAME = "lora_merge_recipe.yml"


def resolved_recipe(plan: FoldPlan) -> dict[str, Any]:
    """Everything the fold used, as a recipe that reruns it: absolute paths, each ω explicit with its rule."""
    req = plan.request
    pack_terms = plan.terms[:len(plan.packs)]
    recipe: dict[str, Any] = {"general": str(req.general.absolute())}
    if pack_terms:
        recipe["adapters"] = [{"pack": str(Path(t.path).absolute()), "weight": t.weight.value,
                               "rule": t.weight.rule, "sha256": dict(t.sha256)}
                              for t in pack_terms]
    for key, folder in (("base", req.base), ("cft", req.cft)):
        if folder is not None:
            recipe[key] = str(folder.absolute())
    if req.method == "wise_ft":
        recipe["cft_weight"] = plan.terms[0].weight.value
    recipe.update(method=req.method, density=req.density, seed=req.seed, dtype=req.dtype,
                  max_shard_size=req.max_shard_size)
    if plan.general_size is not None:
        recipe["general_size"] = plan.general_size
    if req.allow_foreign_base:  # the rerun must be allowed what this fold was
        recipe["allow_foreign_base"] = True
    folders = {"general": req.general, "base": req.base, "cft": req.cft}
    recipe["model_sha256"] = {role: weights_identity(folders[role], ws) for role, ws in plan.models.items()}
    recipe["tool_version"] = __version__
    return recipe


def write_recipe(folder: Path, recipe: dict[str, Any], command: str) -> Path:
    """``lora_merge_recipe.yml`` (:func:`resolved_recipe`) in ``folder``, its first line the command that reruns it."""
    text = f"# {command}\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    path = folder / RECIPE_NAME
    path.write_text(text, encoding="utf-8")
    return path


def rerun_command(out: Path) -> str:
    """The command that refolds ``out`` from its recipe into a new folder beside it."""
    return (f"lora-merge fold --config {shlex.quote(str(out / RECIPE_NAME))} "
            f"--out {shlex.quote(str(out.with_name(out.name + '-rerun')))}")
