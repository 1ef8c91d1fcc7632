"""`pack …`: look at skill packs (inspect; other modules add verify, export, import …)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lora_merge.pack_info import summarize_pack
from lora_merge.printable import printable
from lora_merge.skillpack import resolve_pack


@click.group("pack")
def pack() -> None:
    """Inspect and manage skill packs."""


@pack.command("inspect")
@click.argument("path")
@click.option("--adapters-dir", default="adapters", show_default=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON only.")
def inspect_cmd(path: str, adapters_dir: Path, as_json: bool) -> None:
    """Print a pack's manifest and adapter summary."""
    s = summarize_pack(resolve_pack(path, adapters_dir))
    if as_json:
        click.echo(json.dumps(s.manifest, indent=2, ensure_ascii=True))  # JSON escapes every control character
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
