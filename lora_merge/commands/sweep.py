"""`sweep`: fold a grid of ω, evaluate each point, plot the trade-off and recommend an ω."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.evaluate import classifier_from, eval_options
from lora_merge.commands.options import renamed, shared, split_names
from lora_merge.core.printable import printable
from lora_merge.evaluate.sweep_select import DEFAULT_RULE  # torch-free: --help stays light

PAPER_GRID = (0.2, 0.4, 0.6, 0.8, 1.0)  # weights.PAPER_GRID, the paper's grid (a test checks they agree)


@click.command("sweep")
@shared("--general", required=True)
@shared("--adapters", required=True, extra="Several packs share one ω scale.")
@shared("--adapters-dir")
@click.option("--omegas", default=",".join(f"{w:g}" for w in PAPER_GRID), show_default=True,
              help="The ω grid, comma separated; ω = 0 (θG) and |D|/|G| are always added.")
@renamed("--weights", "--omegas", "sweep")
@click.option("--general-size", type=int, default=None, help="|G| (instances θG was tuned on) for the |D|/|G| point.")
@shared("--base", extra="Needed for replaced tensors.")
@eval_options
@click.option("--general-group", default="general", show_default=True, help="Eval group of general ability.")
@click.option("--skill-group", default=None, help="Eval group of the skill (default: 'skill' or the only other one).")
@click.option("--select", "select_rule", default=DEFAULT_RULE, show_default=True,
              help="Rule that picks ω (scores 0–100): general-noninferior:X, the best skill score among the points "
                   "whose general score's 95 % paired interval against θG has its lower bound ≥ −X points (θG always "
                   "qualifies); or, on point scores, general-within:X | best-skill | best-general | best-mean.")
@click.option("--write-recommendation", is_flag=True,
              help="Store the chosen ω in each pack's skill.json with the rule, its tolerance and the intervals "
                   "(general-noninferior:X only; each pack must pass `pack verify` first).")
@click.option("--fold-mode", type=click.Choice(["auto", "memory", "disk"]), default="auto", show_default=True,
              help="Fold each ω in memory, or through the streamed fold into a temporary folder.")
@renamed("--mode", "--fold-mode", "sweep")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for results and tradeoff.png.")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
@shared("--allow-foreign-base")
def sweep_cmd(general, adapters, adapters_dir, omegas, general_size, base, evals, batch_size, device, limit,
              max_new_tokens, refusal_phrases, general_group, skill_group, select_rule, write_recommendation, fold_mode,
              out, force, allow_foreign_base) -> None:
    """Sweep ω for one or several packs: θG, the grid and |D|/|G|, scored, plotted, one ω recommended."""
    from lora_merge.evaluate.sets import parse_eval_option
    from lora_merge.evaluate.sweep import SweepRequest, run_sweep
    from lora_merge.rules.omega import parse_grid

    req = SweepRequest(
        general=general, packs=split_names(adapters), evals=parse_eval_option(evals), out=out, weights=parse_grid(omegas),
        adapters_dir=adapters_dir, general_size=general_size, base=base, select=select_rule, general_group=general_group,
        skill_group=skill_group, batch_size=batch_size, device=device, limit=limit, max_new_tokens=max_new_tokens,
        classifier=classifier_from(refusal_phrases), mode=fold_mode, force=force, write_recommendation=write_recommendation,
        allow_foreign_base=allow_foreign_base,
    )
    res = run_sweep(req)
    for w in res.warnings:
        click.secho(f"warning: {printable(w)}", fg="yellow", err=True)
    click.echo(printable((res.out / "results.md").read_text(), keep="\n"))
    rec = res.recommendation
    click.echo(printable(f"recommended: {rec.label} ({', '.join(f'{k} ω = {v:.4g}' for k, v in rec.weights.items())}) by {rec.rule}"))
    if write_recommendation:
        click.echo(printable("written into skill.json of " + ", ".join(rec.weights)))
    click.echo(f"wrote {res.out}/results.csv, results.json, results.md, tradeoff.png ({res.mode} folds)")
