"""`study`: the Merge-to-Learn study on a real pretrained model (SmolLM2-135M-Instruct by default)."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.core import console


@click.command("study")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Study settings (YAML), e.g. configs/study-smollm2.yaml.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: the config's out).")
@click.option("--quick", is_flag=True, default=False, help="Pico model and tiny sets: the whole pipeline at test size.")
@click.option("--threads", type=int, default=None, help="torch threads (default: the config's, else torch's).")
@click.option("--seed", type=int, default=None,
              help="Seed of the data draw and of every training run (default: the config's); use with --out.")
@click.option("--cft-replay", is_flag=True, default=None,
              help="Also CFT with G replayed, per skill: one more training run and scoring each (README: how long).")
@click.option("--rt-per-skill", is_flag=True, default=None,
              help="Also RT on G ∪ D for each skill alone: θpre retrained and scored per skill (README: how long).")
def study(config_path: Path, out: Path | None, quick: bool, threads: int | None, seed: int | None,
          cft_replay: bool | None, rt_per_skill: bool | None) -> None:
    """Prepare θpre, tune θG, train skills (PTM, CFT, RT), sweep ω, fold several skills; write tables and plots."""
    from lora_merge.study.config import load_study_config
    from lora_merge.study.driver import run_study

    cfg = load_study_config(config_path, {"out": str(out) if out else None, "quick": quick or None,
                                          "threads": threads, "seed": seed, "cft_replay": cft_replay,
                                          "rt_per_skill": rt_per_skill})
    artefacts = run_study(cfg, echo=console.info)  # stage lines: progress, off with --quiet
    for name, path in artefacts.items():
        click.echo(f"{name}: {path}")


@click.command("study-compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the table to this file.")
def study_compare(runs: tuple[Path, ...], out: Path | None) -> None:
    """Several study runs (e.g. one per --seed) side by side: mean, range and each run's score."""
    from lora_merge.study.compare import compare_runs

    table = compare_runs(list(runs))
    click.echo(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        from lora_merge.core.output import replace_file

        replace_file(out, table)


@click.command("study-map")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Map settings (YAML), e.g. configs/study-map.yaml.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: the config's out).")
@click.option("--quick", is_flag=True, default=False, help="Pico model and tiny sets: the whole pipeline at test size.")
@click.option("--threads", type=int, default=None, help="torch threads (default: the config's, else torch's).")
def study_map(config_path: Path, out: Path | None, quick: bool, threads: int | None) -> None:
    """When does PTM transfer? Packs at several |D|, ranks and full parameters, on two θG, swept finely over ω.

    Resumable: rerun the same command to add only what is missing (a finished run adds nothing)."""
    from lora_merge.study.map_config import load_map_config
    from lora_merge.study.transfer_map import run_map

    cfg = load_map_config(config_path, {"out": str(out) if out else None, "quick": quick or None,
                                        "threads": threads})
    artefacts = run_map(cfg, echo=console.info)
    for name, path in artefacts.items():
        click.echo(f"{name}: {path}")
