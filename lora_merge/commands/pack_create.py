"""`pack create`: wrap a PEFT LoRA adapter (or a dense τ file) trained anywhere into a skill pack."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import shared
from lora_merge.core.printable import printable


@click.command("create")
@click.argument("adapter_dir", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Pack name (a plain folder name).")
@click.option("--instances", required=True, type=int, help="|D|: training instances the adapter was trained on.")
@shared("--base", extra="The adapter was trained from it: its fingerprint is recorded and the adapter checked now.")
@click.option("--description", default="", help="One line about the skill, for the card.")
@click.option("--license", "license_", default=None, help="Licence of the adapter, e.g. apache-2.0.")
@shared("--adapters-dir", extra="The pack is written there (as NAME) unless --out is given.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Pack folder to write instead.")
@click.option("--force", is_flag=True, help="Replace an existing pack folder.")
def create_cmd(adapter_dir, name, instances, base, description, license_, adapters_dir, out, force) -> None:
    """Make ADAPTER_DIR (adapter_config.json + adapter_model.safetensors, or task_vector.safetensors) a skill pack."""
    from lora_merge.pack.create import CreateRequest, create_pack

    folder, manifest = create_pack(CreateRequest(
        source=adapter_dir, name=name, instances=instances, adapters_dir=adapters_dir, out=out, base=base,
        description=description, license=license_, force=force))
    click.echo(f"created {manifest.kind} pack {printable(manifest.name)} in {folder} (|D| = {instances}; "
               f"base {printable(manifest.base_model.name_or_path or 'unknown')})")
