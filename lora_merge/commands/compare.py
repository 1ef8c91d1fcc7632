"""`compare`: two `eval --out` folders, item by item, with the paired difference and its 95 % interval."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import shared, write_json

FOLDER = click.Path(path_type=Path)


@click.command("compare")
@click.argument("baseline", type=FOLDER)
@click.argument("candidate", type=FOLDER)
@shared("--json", "json_path", extra='Keys: "baseline", "candidate", "confidence", and "sets" and "groups", '
        'lists of {group, file, metric, n, baseline, candidate, delta, low, high, method} (file and metric null '
        'for a group).')
@click.option("--resamples", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Bootstrap resamples for loss files and for groups of several eval sets.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap (loss files, groups of several eval sets).")
def compare_cmd(baseline, candidate, json_path, resamples, bootstrap_seed) -> None:
    """CANDIDATE − BASELINE per eval file and group, each with its paired 95 % interval, on the 0–100 scale.

    BASELINE and CANDIDATE are folders written by `eval --out` on the same eval sets. Items are paired by id
    (by position where a file's rows have no unique ids, and then only when their prompts agree); different
    item sets are refused. 0/1 metrics (exact, contains, choice, refusal, compliance): Newcombe's paired
    interval (1998, method 10). loss (score 100/perplexity): a paired bootstrap of the token-weighted score,
    its resamples and seed in the method column. A group's row is the difference of `eval`'s group score (the
    mean of its files' scores): with its eval set's interval when it has one set, else a paired bootstrap
    stratified by eval set (items resampled within each file). The sweep reports the same numbers against θG.
    lm-eval tasks keep no per-item samples and are not compared.
    """
    from lora_merge.evaluate.compare import compare_runs

    result = compare_runs(baseline, candidate, resamples=resamples, seed=bootstrap_seed)
    if json_path != "-":
        click.echo(result.markdown())
    if json_path is not None:
        write_json(result.to_dict(), json_path)
