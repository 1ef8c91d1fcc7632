"""`pack merge`: several skill packs into one pack (sub-command of `pack`)."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import shared, split_names
from lora_merge.core.choices import RULE_NAMES
from lora_merge.core.printable import printable


@click.command("merge")
@shared("--adapters", required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder of the merged pack.")
@shared("--adapters-dir")
@shared("--weights", extra="1,1 is task arithmetic. Default: each pack's share of the data, |Dk|/Σ|D|.")
@click.option("--method", default="linear", show_default=True,
              type=click.Choice(RULE_NAMES),
              help="Merge rule: linear is exact (factors concatenated, rank Σr); the others go through ΔW and SVD.")
@click.option("--density", type=float, default=1.0, show_default=True, help="Kept fraction for ties/dare rules.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the dare rules.")
@click.option("--rank", type=int, default=None, help="SVD rank for non-linear rules (default: Σ of the sources' ranks).")
@shared("--base", extra="Binds the packs with the fold's name rules (needed for replaced tensors).")
@click.option("--name", default=None, help="Name in the merged pack's skill.json (default: the --out folder's name).")
@click.option("--description", default=None, help="Description in skill.json.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the source packs (not recommended).")
@shared("--allow-foreign-base")
def merge_cmd(adapters, out, adapters_dir, weights, method, density, seed, rank, base, name, description, force,
              no_verify, allow_foreign_base) -> None:
    """Merge packs (--adapters a,b[,…]) into one skill pack to share or serve; folding it equals folding them."""
    from lora_merge.core.output import check_output
    from lora_merge.core.output_kinds import PACK
    from lora_merge.fold.plan import load_packs
    from lora_merge.pack.merge import PackMergeRequest, merge_packs
    from lora_merge.rules.omega import parse_weights

    names = split_names(adapters)
    packs = load_packs(names, adapters_dir, verify=not no_verify)
    check_output(out, force, [p.path for p in packs] + [base], kind=PACK, origin="--out")  # only a pack is replaced
    res = merge_packs(PackMergeRequest(
        packs=packs, out=out, name=name or Path(out).name, weights=parse_weights(weights, len(names)) if weights else None,
        method=method, density=density, seed=seed, rank=rank, base=base, description=description, force=force,
        allow_foreign_base=allow_foreign_base,
    ))
    click.echo(f"merged {len(packs)} packs ({method}) → {printable(res.out)}: a {res.kind} pack, "
               f"{res.tensors} tensors, |D| = {res.instances if res.instances is not None else 'unknown'}")
    for p, w in zip(packs, res.weights, strict=True):
        click.echo(f"  {printable(p.name):<16} ω = {w.value:.4g}  ({printable(w.formula)})")  # pack names: escaped
    if res.errors:
        worst = max(res.errors, key=lambda e: e.relative)
        click.echo(f"  SVD to rank ≤ {max(e.rank for e in res.errors)}: relative error {res.overall_error:.3%} "
                   f"overall, worst {worst.relative:.3%} ({printable(worst.name)})")
    if res.weights[0].rule == "data_share":
        click.echo("  fold it with ω = |D|/|G| (its |D| is Σ|D|) to get what folding the sources at |Dk|/|G| gives")
    else:
        click.echo("  fold it with --weights 1 for this mixture; its |D| counts the sources merged with ω ≠ 0")
    for problem in res.allowed:
        click.secho(f"warning: --allow-foreign-base: {printable(problem)}; merged anyway (recorded in skill.json, "
                    "no sketch)", fg="yellow", err=True)
