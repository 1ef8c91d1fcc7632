"""`fold`: θ = θG + Σ ωk·τk into a new model folder, from options or a merge recipe (--config)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from lora_merge.commands.options import SIZE, shared, split_names
from lora_merge.core.choices import FLOAT_DTYPE_NAMES, METHOD_NAMES
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.printable import printable

if TYPE_CHECKING:
    from lora_merge.fold.merge_recipe import MergeRecipe
    from lora_merge.fold.plan import FoldRequest


@click.command("fold")
@click.option("--config", "config", default=None, type=click.Path(path_type=Path),
              help="Merge recipe YAML (general, adapters: [{pack, weight}], method, …); options given here override it.")
@shared("--general", default=None, type=str, extra="Required unless --config gives it.")
@shared("--adapters", default=None)
@shared("--adapters-dir")
@shared("--weights", extra="Default: see --rule.")
@click.option("--rule", "weight_rule", default="auto", show_default=True, type=click.Choice(["auto", "size"]),
              help="Without --weights: auto takes each pack's recommended ω (sweep --write-recommendation), else "
                   "|D|/|G|; size always takes ω = |D|/|G|.")
@click.option("--general-size", type=int, default=None, help="|G|: instances θG was tuned on (for ω = |D|/|G|).")
@shared("--base", type=str, extra="Needed for replaced tensors and linear_interp.")
@click.option("--method", default="linear", show_default=True, type=click.Choice(METHOD_NAMES),
              help="Merge rule (docs/merge-rules.md), or a paper variant: linear_interp (needs --base), wise_ft (--cft).")
@click.option("--cft", type=click.Path(path_type=Path), default=None, help="wise_ft: θG continued-finetuned on D.")
@click.option("--density", type=float, default=1.0, show_default=True, help="Kept fraction for ties/dare rules.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the dare rules.")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", *FLOAT_DTYPE_NAMES]),
              help="Output dtype; auto keeps each tensor's dtype in θG.")
@shared("--device")
@click.option("--max-shard-size", default="5GB", show_default=True, type=SIZE, help="Largest shard, e.g. 5GB.")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Output folder for the merged model (required unless --config gives it).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of pack weights (not recommended).")
@shared("--allow-foreign-base")
@click.pass_context
def fold_cmd(ctx, config, general, adapters, adapters_dir, weights, weight_rule, general_size, base, method, cft,
             density, seed, dtype, device, max_shard_size, out, force, no_verify, allow_foreign_base) -> None:
    """Fold one or several skill packs into a general model (every output holds lora_merge_recipe.yml to rerun it)."""
    from lora_merge.fold.merge_recipe import load_merge_recipe
    from lora_merge.fold.write import fold

    if no_verify:
        click.secho("warning: --no-verify: pack weights are NOT checked against their manifest hashes", fg="yellow", err=True)
    given = {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    req = build_request(load_merge_recipe(config) if config else None, given)
    res = fold(req)
    for note in res.notices:
        click.echo(f"note: {printable(note)}", err=True)
    for w in res.warnings:
        click.secho(f"warning: {printable(w)}", fg="yellow", err=True)
    click.echo(f"folded {len(res.packs)} pack(s) into {req.general} → {res.out}")
    for p in res.packs:
        click.echo(f"  {printable(p.name):<16} ω = {p.weight.value:.4g}  ({p.weight.formula}; {p.tensors} tensors)")
    click.echo(f"  {res.tensors_changed}/{res.tensors_total} tensors changed, {res.bytes_written / 1e6:.1f} MB "
               f"in {len(res.shards)} shard(s), {res.seconds:.1f} s; recipe: {res.out / 'lora_merge_recipe.yml'}")


# command-line option → FoldRequest field (the rest share their name)
FIELD = {"adapters": "packs", "no_verify": "verify"}


def build_request(recipe: MergeRecipe | None, given: dict) -> FoldRequest:
    """The request from the recipe (if any) with the options given on the command line on top."""
    from lora_merge.core.hub import resolve_model
    from lora_merge.fold.merge_recipe import MergeRecipe, recipe_request
    from lora_merge.rules.omega import parse_weights

    opts = {FIELD.get(k, k): v for k, v in given.items() if k != "config"}
    if "verify" in opts:
        opts["verify"] = not opts["verify"]
    method = opts.get("method", recipe.method if recipe else "linear")
    if "packs" in opts:
        opts["packs"] = split_names(opts["packs"])
    if "weights" in opts:
        count = len(opts["packs"]) if "packs" in opts else (len(recipe.adapters) if recipe else 0)
        opts["weights"] = parse_weights(opts["weights"], count or 1)  # wise_ft takes one ω for its --cft model
    if recipe is None:
        if not opts.get("general"):
            raise LoraMergeError("--general is required (or a merge recipe: --config merge.yml)")
        if "packs" not in opts and method != "wise_ft":
            opts["packs"] = split_names("")  # the usual "--adapters needs at least one pack" error
        recipe = MergeRecipe(general=opts["general"])
    req = recipe_request(recipe, **opts)
    req.general = resolve_model(req.general, "--general")
    req.base = resolve_model(req.base, "--base") if req.base is not None else None
    return req


COMMANDS = [fold_cmd]
