"""`walkthrough`: a self-contained fold walk-through on a pico model (no downloads)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("walkthrough")
@click.option("--workdir", default="runs/walkthrough", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the pico model, packs and folded model.")
def walkthrough_cmd(workdir: Path) -> None:
    """Build a pico model and two LoRA packs, fold them, and show what changed."""
    from lora_merge.walkthrough import run_walkthrough

    run_walkthrough(workdir, echo=click.echo)
