"""`pack verify`, `pack export`, `pack import`: check and share skill packs (sub-commands of `pack`)."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import SIZE, shared
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.printable import printable

DEFAULT_MAX_IMPORT = "20GiB"  # the default of sharing.import_pack (a test checks they agree)


@click.command("verify")
@click.argument("path")
@shared("--adapters-dir")
def verify_cmd(path: str, adapters_dir: Path) -> None:
    """Check a pack's manifest, sha256 hashes, safetensors headers and values; exit 2 if anything fails."""
    from lora_merge.pack.sharing import check_pack
    from lora_merge.pack.skillpack import resolve_pack

    folder = resolve_pack(path, adapters_dir)
    checks = check_pack(folder)
    for c in checks:
        click.secho(f"{'ok  ' if c.ok else 'FAIL'}  {printable(c.what):<34}{printable(c.detail)}", fg=None if c.ok else "red")
    failed = sum(not c.ok for c in checks)
    if failed:
        raise LoraMergeError(f"{folder}: {failed} check(s) failed; do not fold or share this pack")
    click.echo(f"{folder}: all {len(checks)} checks hold")


@click.command("upgrade")
@click.argument("path")
@shared("--adapters-dir")
def upgrade_cmd(path: str, adapters_dir: Path) -> None:
    """Record the hash of adapter_config.json in an older pack's manifest (only if the pack verifies)."""
    from lora_merge.pack.skillpack import resolve_pack
    from lora_merge.pack.upgrade import upgrade_pack

    res = upgrade_pack(resolve_pack(path, adapters_dir))
    if res.old_format == res.new_format and res.config is None:
        click.echo(f"{res.path}: already format {res.new_format}; every file is covered, nothing to do")
        return
    click.echo(f"{res.path}: manifest format {res.old_format} → {res.new_format}; now hashed: {', '.join(sorted(res.files))}")
    if res.config is not None:
        shown = {k: res.config.get(k) for k in ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern")}
        click.echo(f"  the hash vouches for the config as it is now: {printable(shown)}; check it is what the pack's "
                   "author set")


@click.command("export")
@click.argument("name")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Archive to write, e.g. NAME.tar.gz.")
@shared("--adapters-dir")
@click.option("--force", is_flag=True, help="Replace an existing archive.")
def export_cmd(name: str, out: Path, adapters_dir: Path, force: bool) -> None:
    """Verify a pack and write it as a .tar.gz others can `pack import`."""
    from lora_merge.pack.sharing import export_pack

    res = export_pack(name, out, adapters_dir, force=force)
    click.echo(f"exported {res.name} ({', '.join(res.files)}) → {res.archive} ({res.bytes / 1e6:.2f} MB)")


@click.command("import")
@click.argument("archive", type=click.Path(path_type=Path))
@shared("--adapters-dir")
@click.option("--name", default=None, help="Folder name under --adapters-dir (default: the archive's).")
@click.option("--force", is_flag=True, help="Replace an existing pack of that name.")
@click.option("--max-size", default=DEFAULT_MAX_IMPORT, show_default=True, type=SIZE,
              help="Refuse archives that unpack to more than this (decompression bombs).")
def import_cmd(archive: Path, adapters_dir: Path, name: str | None, force: bool, max_size: int) -> None:
    """Unpack a shared pack into the adapters folder after verifying every file."""
    from lora_merge.pack.sharing import import_pack

    res = import_pack(archive, adapters_dir, name=name, force=force, max_bytes=max_size)
    for note in res.notes:
        click.secho(f"note: {note}", fg="yellow", err=True)
    click.echo(f"imported {res.name} ({', '.join(res.files)}, {res.bytes / 1e6:.2f} MB, verified) → {res.path}")
