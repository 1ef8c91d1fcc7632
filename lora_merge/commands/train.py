"""`train`: a skill pack (PTM) or a CFT / RT / general model from a recipe, any setting overridable by flags.

Several GPUs: ``accelerate launch cli.py train --config …`` (accelerate's own launcher; nothing home-made).
"""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import MODEL
from lora_merge.core import console
from lora_merge.core.errors import LoraMergeError

P = click.Path(path_type=Path)


def parse_sets(items: tuple[str, ...]) -> dict:
    """--set key=value (value read as YAML: 0.1, true, [q_proj, v_proj])."""
    from lora_merge.core.yaml_model import parse_yaml
    from lora_merge.train.training_recipe import FIELDS

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise LoraMergeError(f"--set {item!r}: write KEY=VALUE, e.g. --set warmup=0.03")
        if key not in FIELDS:
            raise LoraMergeError(f"--set {key}: unknown recipe key (known keys: {', '.join(FIELDS)})")
        out[key] = parse_yaml(value, f"--set {key}")
    return out


@click.command("train")
@click.option("--config", "config", type=P, default=None, help="Recipe YAML (configs/skills/…, configs/train/…).")
@click.option("--base", type=MODEL, help="Pretrained base model folder θpre.")
@click.option("--general", type=MODEL, help="General model folder θG (start of --strategy cft).")
@click.option("--data", type=P, help="Skill data D: .jsonl, .json, .parquet or .csv.")
@click.option("--general-data", type=P, help="General data G (--strategy rt).")
@click.option("--replay", type=P, help="General data mixed into CFT.")
@click.option("--replay-ratio", type=float, help="Replay rows per skill row (default 1 with --replay).")
@click.option("--name", help="Skill name: the pack is written to ADAPTERS_DIR/NAME.")
@click.option("--description", help="One line about the skill (goes on the pack's card).")
@click.option("--mode", type=click.Choice(["lora", "qlora", "full"]), help="Training mode: what is trained.")
@click.option("--strategy", type=click.Choice(["ptm", "cft", "rt", "general"]),
              help="ptm: a skill pack from θpre; cft: θG continued on D; rt: retrain on G ∪ D; general: θG itself.")
@click.option("--out", type=P, help="Output folder (default adapters/NAME, or runs/models/NAME for cft/rt/general).")
@click.option("--adapters-dir", type=P, help="Folder the pack is written into as NAME (default adapters).")
@click.option("--run-dir", type=P, help="Checkpoint folder (default runs/train/NAME).")
@click.option("--tokenizer", type=P, help="Tokenizer folder (default: the start model's).")
@click.option("--epochs", type=float, help="Passes over the data (fractions allowed).")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps (overrides --epochs).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--rank", type=int, help="LoRA rank r.")
@click.option("--alpha", type=float, help="LoRA alpha (the update is scaled by alpha / r).")
@click.option("--batch-size", type=int, help="Rows per device per step.")
@click.option("--grad-accum", type=int, help="Steps whose gradients are summed before one update.")
@click.option("--max-length", type=int, help="Longest row, in tokens (longer rows are cut).")
@click.option("--save-steps", type=int, help="Save a checkpoint every N steps.")
@click.option("--seed", type=int, help="Seed of data order and initialisation.")
@click.option("--freeze", multiple=True, metavar="TARGET",
              help="Full mode: keep these at their start values: embeddings, lm_head (repeat or comma-separate).")
@click.option("--resume", is_flag=True, default=None, help="Continue from the last checkpoint in the run folder.")
@click.option("--force", is_flag=True, default=None, help="Replace an existing output (and stale checkpoints).")
@click.option("--no-progress", is_flag=True, help="No progress bars (the same as the global lora-merge --no-progress).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other recipe key, e.g. --set warmup=0.1")
def train_cmd(config, sets, no_progress, **flags) -> None:
    """Train a skill (PTM → a skill pack) or a CFT / RT / general model, on TRL's SFTTrainer."""
    flags["freeze"] = [t for item in flags["freeze"] for t in item.split(",")] or None  # none given: the recipe's
    overrides = {**parse_sets(sets), **{k: v for k, v in flags.items() if v is not None}}
    from lora_merge.train.run import train_skill
    from lora_merge.train.training_recipe import load_training_recipe

    if no_progress:
        console.configure(progress=False, quiet=console.is_quiet())
    if not console.progress_enabled():
        overrides["progress"] = False
    recipe = load_training_recipe(config, overrides)
    res = train_skill(recipe)
    if not res.main_process:
        return  # the main process of a multi-process launch reports for all of them
    for w in res.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    what = "skill pack" if res.produces == "pack" else f"{res.strategy} model"
    click.echo(f"trained {what} → {res.out}")
    click.echo(f"  {res.mode}/{res.strategy}: {res.instances} instances, {res.tokens} tokens, {res.steps} steps, "
               f"{res.epochs:.2f} epochs, {res.wall_seconds:.1f} s, final loss {res.final_loss}")
    if res.resumed_from_step is not None:
        click.echo(f"  resumed from step {res.resumed_from_step}")
