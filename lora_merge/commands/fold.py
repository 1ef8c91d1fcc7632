"""`fold`: θ = θG + Σ ωk·τk into a new model folder, from options or a merge recipe (--config)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from lora_merge.commands.options import SIZE, given_options, shared
from lora_merge.core.choices import FLOAT_DTYPE_NAMES, METHOD_NAMES
from lora_merge.core.printable import printable

if TYPE_CHECKING:
    from lora_merge.fold.request import FoldRequest
    from lora_merge.fold.write import FoldResult


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
def fold_cmd(ctx: click.Context, config: Path | None, no_verify: bool, **_options: object) -> None:
    """Fold one or several skill packs into a general model (every output holds lora_merge_recipe.yml to rerun it)."""
    from lora_merge.fold.merge_recipe import load_merge_recipe
    from lora_merge.fold.request import fold_request
    from lora_merge.fold.write import fold

    if no_verify:
        click.secho("warning: --no-verify: pack weights are NOT checked against their manifest hashes", fg="yellow", err=True)
    # the rest of the options reach the request only where the user gave them, so a recipe's values stand otherwise
    req = fold_request(load_merge_recipe(config) if config else None, given_options(ctx), recipe_path=config)
    report(req, fold(req))


def report(req: FoldRequest, res: FoldResult) -> None:
    """The fold's notes and warnings (stderr), then what was folded at which ω, and where it went."""
    for note in res.notices:
        click.echo(f"note: {printable(note)}", err=True)
    for w in res.warnings:
        click.secho(f"warning: {printable(w)}", fg="yellow", err=True)
    click.echo(f"folded {len(res.packs)} pack(s) into {req.general} → {res.out}")
    for p in res.packs:
        click.echo(f"  {printable(p.name):<16} ω = {p.weight.value:.4g}  ({p.weight.formula}; {p.tensors} tensors)")
    click.echo(f"  {res.tensors_changed}/{res.tensors_total} tensors changed, {res.bytes_written / 1e6:.1f} MB "
               f"in {len(res.shards)} shard(s), {res.seconds:.1f} s; recipe: {res.out / 'lora_merge_recipe.yml'}")
