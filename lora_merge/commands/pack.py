"""`pack …`: the group and `pack inspect`; lora_merge/cli.py adds every sub-command (verify, export, import …)."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import MODEL, shared, write_json
from lora_merge.core.printable import printable


@click.group("pack")
def pack() -> None:
    """Inspect and manage skill packs."""


@click.command("inspect")
@click.argument("path")
@shared("--adapters-dir")
@shared("--json", "json_path", extra="Here: the manifest (skill.json); with --quantization-error, the per-layer ratios.")
@click.option("--quantization-error", "quant_base", default=None, type=MODEL, metavar="BASE",
              help="θpre the pack was trained from: quantise it to 4 bits as the pack's training did (NF4, block 64, "
                   "double quant when the pack was not trained in 4 bits) and print ‖θpre − dequant(Q4(θpre))‖ / ‖ΔW‖ "
                   "per layer.")
@shared("--device")
def inspect_cmd(path: str, adapters_dir: Path, json_path: str | None, quant_base: Path | None, device: str) -> None:
    """Print a pack's manifest and adapter summary (reads JSON and safetensors headers only, unless
    --quantization-error)."""
    from lora_merge.pack.info import summarize_pack
    from lora_merge.pack.skillpack import resolve_pack

    folder = resolve_pack(path, adapters_dir)
    if quant_base is not None:
        _quantization_error(folder, quant_base, json_path, device)
        return
    s = summarize_pack(folder)
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
        ("base sketch", f"{s.sketched} weights of the base sampled" if s.sketched is not None
         else "none: a fold cannot check that its general model descends from this pack's base"),
    ]
    for k, v in rows:
        click.echo(f"{k:<22}{printable(v)}")  # every value may come from the pack: escape control characters
    for f, ok, detail in s.hashes:
        click.secho(f"{'verified':<22}{f}: {'ok' if ok else 'FAILED'} ({printable(detail)})", fg=None if ok else "red")
    if s.manifest:
        t = dict(s.manifest["training"])
        q = t.pop("quantization_config", None)
        click.echo(f"{'training':<22}" + printable(", ".join(f"{k}={v}" for k, v in t.items() if v is not None)))
        if q:
            residuals = q.get("residual_norms") or {}
            click.echo(f"{'4-bit base':<22}" + printable(
                f"{q['method']} {q['quant_type']}, block {q['block_size']}, compute {q['compute_dtype']}, quantised "
                f"from {q['quant_dtype']}, double quant {'on' if q['double_quant'] else 'off'}; residual recorded for "
                f"{len(residuals)} layers (--quantization-error BASE prints the ratios)"))
        if s.manifest.get("recommended_weight"):
            rw = s.manifest["recommended_weight"]
            click.echo(f"{'recommended ω':<22}{rw['value']} ({printable(rw['rule'])})")


def _quantization_error(folder: Path, base: Path, json_path: str | None, device: str) -> None:
    """`pack inspect --quantization-error BASE`: one line per adapted layer, then the spread."""
    from lora_merge.core.device import resolve_device
    from lora_merge.pack.quant_error import quantization_report
    from lora_merge.pack.skillpack import load_pack

    report = quantization_report(load_pack(folder), base, resolve_device(device))
    q = report.settings
    layers = [{"layer": r.name, "residual_norm": r.residual, "delta_norm": r.delta, "ratio": r.ratio}
              for r in report.layers]
    if json_path is not None:
        write_json({"settings": q.model_dump(mode="json", exclude={"residual_norms"}), "assumed": report.assumed,
                    "layers": layers, "summary": report.summary()}, json_path)
        if json_path == "-":
            return
    how = f"{q.quant_type}, block {q.block_size}, double quant {'on' if q.double_quant else 'off'}, from {q.quant_dtype}"
    click.echo(printable(f"θpre = {base} quantised to 4 bits ({how}"
                         + ("; assumed: the pack was not trained in 4 bits)" if report.assumed else "; as trained)")))
    click.echo(f"{'layer':<48}{'‖θpre − dq(Q4)‖':>16}{'‖ΔW‖':>12}{'ratio':>10}")
    for r in report.layers:
        click.echo(f"{printable(r.name):<48}{r.residual:>16.4g}{r.delta:>12.4g}{r.ratio:>10.1f}")
    s = report.summary()
    if s:
        click.echo(f"{s['layers']} layers: ratio median {s['median']:.1f}, min {s['min']:.1f}, max {s['max']:.1f}; "
                   f"{s['over_threshold']} over {s['threshold']:g} (the fold's warning, docs/results.md, QLoRA)")


def _modules(targets: list[str] | str | None) -> str:
    """PEFT saves all-linear expanded to full paths; show the distinct module kinds."""
    if not targets or isinstance(targets, str):
        return str(targets)
    kinds = sorted({t.split(".")[-1] for t in targets})
    return f"{', '.join(kinds)} ({len(targets)} modules)" if len(kinds) < len(targets) else ", ".join(kinds)
