"""`pack …`: look at skill packs (inspect; other modules add verify, export, import …)."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import shared, write_json
from lora_merge.printable import printable


@click.group("pack")
def pack() -> None:
    """Inspect and manage skill packs."""


@pack.command("inspect")
@click.argument("path")
@shared("--adapters-dir")
@shared("--json", "json_path", extra="Here: the manifest (skill.json).")
def inspect_cmd(path: str, adapters_dir: Path, json_path: str | None) -> None:
    """Print a pack's manifest and adapter summary (reads JSON and safetensors headers only)."""
    from lora_merge.pack_info import summarize_pack
    from lora_merge.skillpack import resolve_pack

    s = summarize_pack(resolve_pack(path, adapters_dir))
    if json_path is not None:
        write_json(s.manifest, json_path)
        if json_path == "-":
            return
    rows = [
        ("name", s.name), ("path", str(s.path)), ("kind", s.kind), ("base model", s.base_model or "unknown"),
        ("|D| instances", s.instances if s.instances is not None else "unknown (no skill.json)"),
        ("rank / alpha", f"{s.rank} / {s.alpha}" + (" (rsLoRA)" if s.rslora else "")),
        ("target modules", _modules(s.target_modules)), ("modules to save", s.modules_to_save or "none"),
        ("tensors / parameters", f"{s.tensors} / {s.parameters:,}"), ("size on disk", f"{s.bytes_on_disk / 1e6:.2f} MB"),
    ]
    for k, v in rows:
        click.echo(f"{k:<22}{printable(v)}")  # every value may come from the pack: escape control characters
    for f, ok, detail in s.hashes:
        click.secho(f"{'verified':<22}{f}: {'ok' if ok else 'FAILED'} ({printable(detail)})", fg=None if ok else "red")
    if s.manifest:
        t = s.manifest["training"]
        click.echo(f"{'training':<22}" + printable(", ".join(f"{k}={v}" for k, v in t.items() if v is not None)))
        if s.manifest.get("recommended_weight"):
            rw = s.manifest["recommended_weight"]
            click.echo(f"{'recommended ω':<22}{rw['value']} ({printable(rw['rule'])})")


def _modules(targets: list[str] | str | None) -> str:
    """PEFT saves all-linear expanded to full paths; show the distinct module kinds."""
    if not targets or isinstance(targets, str):
        return str(targets)
    kinds = sorted({t.split(".")[-1] for t in targets})
    return f"{', '.join(kinds)} ({len(targets)} modules)" if len(kinds) < len(targets) else ", ".join(kinds)


COMMANDS = [pack]
