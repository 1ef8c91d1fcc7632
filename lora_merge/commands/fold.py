"""`fold`: θ = θG + Σ ωk·τk into a new model folder."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.combine import method_names
from lora_merge.commands.options import SIZE, split_names
from lora_merge.fold import FoldRequest, fold
from lora_merge.printable import printable
from lora_merge.weights import parse_weights


@click.command("fold")
@click.option("--general", required=True, type=click.Path(path_type=Path), help="General model folder θG (safetensors).")
@click.option("--adapters", default=None, help="Skill packs, comma separated: names under --adapters-dir or paths.")
@click.option("--adapters-dir", default="adapters", show_default=True, type=click.Path(path_type=Path))
@click.option("--weights", default=None, help="ω per pack, e.g. 0.24,0.57. Default: ω = |D|/|G|.")
@click.option("--rule", "weight_rule", default="auto", show_default=True, type=click.Choice(["auto", "size"]),
              help="Without --weights: auto takes each pack's recommended ω (sweep --write-recommendation), else "
                   "|D|/|G|; size always takes ω = |D|/|G|.")
@click.option("--general-size", type=int, default=None, help="|G|: instances θG was tuned on (for ω = |D|/|G|).")
@click.option("--base", type=click.Path(path_type=Path), default=None, help="Pretrained base θpre (for replaced tensors).")
@click.option("--method", default="linear", show_default=True, type=click.Choice(method_names()),
              help="Merge rule (docs/merge-rules.md), or a paper variant: linear_interp (needs --base), wise_ft (--cft).")
@click.option("--cft", type=click.Path(path_type=Path), default=None, help="wise_ft: θG continued-finetuned on D.")
@click.option("--density", type=float, default=1.0, show_default=True, help="Kept fraction for ties/dare rules.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the dare rules.")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda: where the arithmetic runs.")
@click.option("--max-shard-size", default="5GB", show_default=True, type=SIZE, help="Largest shard, e.g. 5GB.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder for the merged model.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of pack weights (not recommended).")
def fold_cmd(general, adapters, adapters_dir, weights, weight_rule, general_size, base, method, cft, density, seed, dtype, device,
             max_shard_size, out, force, no_verify) -> None:
    """Fold one or several skill packs into a general model."""
    names = [] if adapters is None and method == "wise_ft" else split_names(adapters or "")
    count = len(names) or 1  # wise_ft takes one ω for its --cft model
    if no_verify:
        click.secho("warning: --no-verify: pack weights are NOT checked against their manifest hashes", fg="yellow", err=True)
    req = FoldRequest(
        general=general, packs=names, out=out, adapters_dir=adapters_dir,
        weights=parse_weights(weights, count) if weights else None, weight_rule=weight_rule, general_size=general_size, base=base, cft=cft,
        method=method, density=density, seed=seed, dtype=dtype, device=device, max_shard_size=max_shard_size,
        force=force, verify=not no_verify,
    )
    res = fold(req)
    for w in res.warnings:
        click.secho(f"warning: {printable(w)}", fg="yellow", err=True)
    click.echo(f"folded {len(res.packs)} pack(s) into {general} → {res.out}")
    for p in res.packs:
        click.echo(f"  {printable(p.name):<16} ω = {p.weight.value:.4g}  ({p.weight.formula}; {p.tensors} tensors)")
    click.echo(f"  {res.tensors_changed}/{res.tensors_total} tensors changed, {res.bytes_written / 1e6:.1f} MB "
               f"in {len(res.shards)} shard(s), {res.seconds:.1f} s")


COMMANDS = [fold_cmd]
