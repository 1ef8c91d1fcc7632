"""`pack interference`: how skill packs would interfere if folded together (cosines, sign conflicts, norms)."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import shared, split_names, write_json
from lora_merge.core.printable import printable


@click.command("interference")
@shared("--adapters", "packs", required=True)
@shared("--adapters-dir")
@shared("--base", extra="The layout to read packs against, and θpre for replaced tensors.")
@click.option("--out", default="interference.png", show_default=True, type=click.Path(path_type=Path),
              help="Heatmap PNG.")
@shared("--json", "json_path")
@click.option("--signs/--no-signs", default=True, show_default=True,
              help="Count sign conflicts (forms each delta one tensor at a time; --no-signs uses LoRA factors only).")
@shared("--device")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of pack weights.")
def interference_cmd(packs, adapters_dir, base, out, json_path, signs, device, no_verify) -> None:
    """Pairwise cosine, sign-conflict rate and norms of skill packs (--adapters), per layer and overall."""
    from lora_merge.core.device import resolve_device
    from lora_merge.fold.plan import bind_packs, load_packs
    from lora_merge.io.fingerprint import read_config
    from lora_merge.io.tensors import WeightSet
    from lora_merge.pack.interference import interference, layout_from_packs, report_json, report_lines, save_heatmap
    from lora_merge.pack.task_vector import TargetModel

    loaded = load_packs(split_names(packs), adapters_dir, verify=not no_verify)
    base_ws = WeightSet.open(base) if base else None
    target = TargetModel.from_weights(base_ws, read_config(base)) if base_ws else layout_from_packs(loaded)
    terms = bind_packs(loaded, target, base_ws)
    report = interference([t.vector for t in terms], [t.label for t in terms], signs=signs,
                          device=resolve_device(device), progress=True)
    if json_path != "-":
        for line in report_lines(report):
            click.echo(printable(line))  # pack names come from their manifests
    heatmap = save_heatmap(report, out)
    if json_path is not None:
        write_json(report_json(report), json_path)
    if json_path != "-":
        click.echo(f"heatmap → {heatmap}")
