"""`pack interference`: how skill packs would interfere if folded together (cosines, sign conflicts, norms)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lora_merge.commands.options import split_names
from lora_merge.commands.pack import pack
from lora_merge.printable import printable


@pack.command("interference")
@click.argument("packs")
@click.option("--adapters-dir", default="adapters", show_default=True, type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Pretrained base θpre: the layout to read packs against, and θpre for replaced tensors.")
@click.option("--out", default="interference.png", show_default=True, type=click.Path(path_type=Path),
              help="Heatmap PNG.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the numbers here.")
@click.option("--signs/--no-signs", default=True, show_default=True,
              help="Count sign conflicts (forms each delta one tensor at a time; --no-signs uses LoRA factors only).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of pack weights.")
def interference_cmd(packs, adapters_dir, base, out, json_path, signs, device, no_verify) -> None:
    """Pairwise cosine, sign-conflict rate and norms of skill packs PACKS (comma separated), per layer and overall."""
    from lora_merge.device import resolve_device
    from lora_merge.fingerprint import read_config
    from lora_merge.interference import interference, layout_from_packs, report_json, report_lines, save_heatmap
    from lora_merge.plan import bind_packs, load_packs
    from lora_merge.task_vector import TargetModel
    from lora_merge.tensors import WeightSet

    loaded = load_packs(split_names(packs), adapters_dir, verify=not no_verify)
    base_ws = WeightSet.open(base) if base else None
    target = TargetModel.from_weights(base_ws, read_config(base)) if base_ws else layout_from_packs(loaded)
    terms = bind_packs(loaded, target, base_ws)
    report = interference([t.vector for t in terms], [t.label for t in terms], signs=signs,
                          device=resolve_device(device), progress=True)
    for line in report_lines(report):
        click.echo(printable(line))  # pack names come from their manifests
    click.echo(f"heatmap → {save_heatmap(report, out)}")
    if json_path:
        Path(json_path).write_text(json.dumps(report_json(report), indent=2) + "\n")
        click.echo(f"numbers → {json_path}")


COMMANDS: list = []  # `pack interference` is attached to the pack group above
