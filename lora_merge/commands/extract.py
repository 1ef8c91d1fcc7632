"""`extract`: a skill pack τ = θD − θpre from a full-parameter finetuned model (dense, or LoRA by SVD)."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import MODEL, shared
from lora_merge.core.choices import FLOAT_DTYPE_NAMES


@click.command("extract")
@click.option("--model", required=True, type=MODEL, help="Finetuned model θD (safetensors): a folder, or org/name from the local Hugging Face cache.")
@shared("--base", required=True, extra="The model θD was finetuned from.")
@click.option("--name", required=True, help="Skill name (the pack folder under --adapters-dir).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Pack folder (default: adapters/NAME).")
@shared("--adapters-dir")
@click.option("--rank", type=int, default=None, help="Compress τ to a LoRA pack of this rank by truncated SVD.")
@click.option("--instances", type=int, default=None, help="|D|: training instances (for ω = |D|/|G|).")
@click.option("--description", default="", help="One line for the pack card.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(FLOAT_DTYPE_NAMES),
              help="dtype of the pack's tensors.")
@shared("--device", extra="τ and the SVDs are computed there.")
@click.option("--force", is_flag=True, help="Replace an existing pack folder.")
@click.option("--show", type=int, default=10, show_default=True, help="Worst weights to list in the SVD report.")
def extract_cmd(model, base, name, out, adapters_dir, rank, instances, description, dtype, device, force, show) -> None:
    """Extract τ = θD − θpre into a skill pack."""
    from lora_merge.pack.extract import ExtractRequest, extract_pack

    res = extract_pack(ExtractRequest(model=model, base=base, name=name, out=out, adapters_dir=adapters_dir, rank=rank,
                                      instances=instances, description=description, dtype=dtype, device=device,
                                      force=force))
    click.echo(f"extracted {res.kind} pack {name!r} → {res.out}: {res.tensors} tensors, "
               f"{res.bytes_written / 1e6:.1f} MB, {res.seconds:.1f} s")
    if res.kind == "lora":
        worst = sorted(res.errors, key=lambda e: e.relative, reverse=True)
        click.echo(f"relative error ‖τ − B·A‖/‖τ‖ per weight (worst {min(show, len(worst))} of {len(worst)}):")
        for e in worst[:show]:
            what = f"rank {e.rank}" if e.rank else "dropped (not a LoRA target)"
            click.echo(f"  {e.name:<48} {str(e.shape):<14} {what:<28} {e.relative:.4f}")
        click.echo(f"overall relative error: {res.overall_error:.4f}")
