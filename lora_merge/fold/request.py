"""The fold request: everything a fold is asked to do, as one typed value, and the one place that builds it.

:class:`FoldRequest` is what :func:`lora_merge.fold.plan.plan_fold` takes. Library callers (sweeps,
benchmarks, studies, tests) construct it directly; the `fold` command builds it with :func:`fold_request`
from a merge recipe (``--config``, optional) and the options given on the command line, which win. The
checks of user input happen there, once: ω's count and bound, a general model and an output folder given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.hub import resolve_model
from lora_merge.core.names import split_names
from lora_merge.pack.skillpack import DEFAULT_REGISTRY
from lora_merge.rules.omega import check_weights, parse_weights

if TYPE_CHECKING:
    from lora_merge.fold.merge_recipe import MergeRecipe

PATH_FIELDS = ("general", "out", "adapters_dir", "base", "cft")


@dataclass
class FoldRequest:
    """Everything `cli.py fold` can say, as one typed value (path fields are Paths once constructed)."""

    general: Path
    packs: Sequence[str]
    out: Path
    adapters_dir: Path = DEFAULT_REGISTRY
    weights: Sequence[float] | None = None
    weight_rule: str = "auto"  # auto: --weights, else a pack's recommended ω, else |D|/|G|; size: never the recommendation
    general_size: int | None = None
    base: Path | None = None
    cft: Path | None = None  # wise_ft: θG continued on D
    method: str = "linear"
    density: float = 1.0
    seed: int = 0
    dtype: str = "auto"
    device: str = "cpu"
    max_shard_size: str | int = "5GB"
    force: bool = False
    verify: bool = True
    progress: bool = True
    fsync: bool = True  # shards reach the disk before the folder is renamed into place
    expected_sha256: Sequence[dict[str, str] | None] | None = None  # per pack, from a recipe: refused if changed
    expected_models: Mapping[str, str] | None = None  # general/base/cft → weights_identity, from a recipe
    allow_foreign_base: bool = False  # fold packs whose base θG does not descend from (provenance.py)
    out_origin: str | None = None  # where `out` came from (--out, a recipe's `out:`), named when it is refused

    def __post_init__(self) -> None:
        # Callers hand in str or Path alike; normalised here, so no reader of a request wraps a field again.
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))


# command-line option → FoldRequest field (the rest share their name)
OPTION_FIELD = {"adapters": "packs", "no_verify": "verify"}
MODEL_FIELDS = {"general": "--general", "base": "--base"}


def fold_request(recipe: MergeRecipe | None, given: Mapping[str, Any],
                 recipe_path: str | os.PathLike | None = None) -> FoldRequest:
    """The request of ``recipe`` (if any) with ``given`` on top: the options the user gave on the command line,
    by option name, as click converted them (``--adapters`` given replaces the recipe's adapters, their ω and
    hashes). Model references still text (a recipe's) are resolved from the local Hugging Face cache.
    ``recipe_path`` names the recipe file where a refusal of its ``out:`` says where the folder came from."""
    options = command_line_fields(given, recipe)
    if recipe is None:
        if not options.get("general"):
            raise LoraMergeError("--general is required (or a merge recipe: --config merge.yml)")
        if "packs" not in options and options.get("method", "linear") != "wise_ft":
            split_names("")  # the usual "--adapters needs at least one pack" error
        values: dict[str, Any] = {"packs": []}
    else:
        values = recipe_fields(recipe)
        if "packs" in options:
            values["weights"] = values["expected_sha256"] = None
    values.update(options)
    if values.get("expected_models"):  # a model given on the command line replaces the recipe's, and its pin
        values["expected_models"] = {k: v for k, v in values["expected_models"].items() if k not in options}
    if not values.get("out"):
        raise LoraMergeError("no output folder: pass --out DIR (or `out:` in the recipe)")
    values["out_origin"] = ("--out" if "out" in options else
                            f"`out:` in the merge recipe{f' {recipe_path}' if recipe_path else ''}")
    if "weights" not in options and values.get("weights") is not None:
        values["weights"] = check_weights(values["weights"], len(values["packs"]) or 1, "merge recipe",
                                          bounded=True)  # the bound --weights is held to
    for key, flag in MODEL_FIELDS.items():
        if isinstance(values.get(key), str):  # a Path came from the command line, already resolved there
            values[key] = resolve_model(values[key], flag)
    return FoldRequest(**values)


def command_line_fields(given: Mapping[str, Any], recipe: MergeRecipe | None) -> dict[str, Any]:
    """The given options as FoldRequest fields: pack names split, --no-verify turned round, --weights parsed
    and checked against the packs it applies to (wise_ft takes one ω, for its --cft model)."""
    fields = {OPTION_FIELD.get(k, k): v for k, v in given.items() if k != "config"}
    if "verify" in fields:
        fields["verify"] = not fields["verify"]
    if "packs" in fields:
        fields["packs"] = split_names(fields["packs"])
    if "weights" in fields:
        count = len(fields["packs"]) if "packs" in fields else (len(recipe.adapters) if recipe else 0)
        fields["weights"] = parse_weights(fields["weights"], count or 1)
    return fields


def recipe_fields(recipe: MergeRecipe) -> dict[str, Any]:
    """A merge recipe's values as FoldRequest fields; ω is given for every adapter or for none."""
    weights = [a.weight for a in recipe.adapters]
    if any(w is not None for w in weights) and any(w is None for w in weights):
        raise LoraMergeError("merge recipe: give `weight` for every adapter or for none (then ω comes from --rule)")
    return {
        "general": recipe.general, "packs": [a.pack for a in recipe.adapters], "out": recipe.out,
        "adapters_dir": recipe.adapters_dir, "base": recipe.base, "cft": recipe.cft, "method": recipe.method,
        "density": recipe.density, "seed": recipe.seed, "general_size": recipe.general_size,
        "weight_rule": recipe.rule, "dtype": recipe.dtype, "max_shard_size": recipe.max_shard_size,
        "allow_foreign_base": recipe.allow_foreign_base,
        "weights": [recipe.cft_weight] if recipe.cft_weight is not None else
        (weights if weights and weights[0] is not None else None),
        "expected_sha256": [a.sha256 for a in recipe.adapters] if any(a.sha256 for a in recipe.adapters) else None,
        "expected_models": recipe.model_sha256,
    }
