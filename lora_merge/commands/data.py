"""`data list`, `data show SKILL`, `data write SKILL --out DIR`, `data validate FILE`: the skill data layer."""

from __future__ import annotations

import json
from pathlib import Path

import click

SIZE_OPTIONS = [
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draw and the splits."),
    click.option("--n-train", type=int, default=None, help="Training rows (default: the skill's own)."),
    click.option("--n-eval", type=int, default=None, help="Rows per eval split (default: the skill's own)."),
    click.option("--system", default=None, help="A system prompt put before every user turn."),
]


def size_options(f):
    for opt in reversed(SIZE_OPTIONS):
        f = opt(f)
    return f


@click.group("data")
def data() -> None:
    """Skill data: training rows and in-form / held-out eval splits (see docs/skills.md)."""


@data.command("list")
def list_cmd() -> None:
    """The skills, what they are and where their data comes from."""
    from lora_merge.skilldata import SKILLS

    for s in SKILLS.values():
        n_train = "all left" if s.n_train is None else s.n_train
        click.echo(f"{s.name:<8} {s.summary}\n         sources: {s.sources}\n"
                   f"         defaults: {n_train} train, {s.n_eval} per eval split")


def _short(row: dict, width: int = 110) -> str:
    from lora_merge.skilldata import prompt_text

    text = prompt_text(row).replace("\n", " ⏎ ")
    text = text if len(text) <= width else text[: width - 1] + "…"
    if "completion" in row:
        return f"{text}\n      → {row['completion'][-1]['content'][:width]}"
    answer = row.get("answer")
    return f"{text}\n      [{row['metric']}{'' if answer is None else ' ' + json.dumps(answer)}] form={row['form']}"


@data.command("show")
@click.argument("skill")
@size_options
@click.option("--examples", type=int, default=2, show_default=True, help="Example rows shown per split.")
def show_cmd(skill: str, seed: int, n_train: int | None, n_eval: int | None, system: str | None,
             examples: int) -> None:
    """Counts, sources, licences, forms, the overlap check and a few rows of each split."""
    from lora_merge.skilldata import build_skill

    d = build_skill(skill, seed, n_train, n_eval, system)
    click.echo(f"skill {d.name} (seed {seed})")
    for k, v in d.counts().items():
        click.echo(f"  {k:<24}{v}")
    click.echo("sources:")
    for s in d.report["sources"]:
        click.echo(f"  {s['name']}: {s['licence']}  [{s['origin']}]")
    click.echo("forms: " + json.dumps(d.report["forms"]))
    click.echo("overlap with training (normalised prompts): "
               + ", ".join(f"{k}={v}" for k, v in d.report["overlap"].items()))
    for split, rows in [("train", d.train), *d.evals.items()]:
        click.echo(f"--- {split}")
        for r in rows[:examples]:
            click.echo("  " + _short(r))


@data.command("write")
@click.argument("skill")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write (created whole).")
@size_options
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
def write_cmd(skill: str, out: Path, seed: int, n_train: int | None, n_eval: int | None, system: str | None,
              force: bool) -> None:
    """Write train.jsonl, eval_<split>.jsonl and report.json for one skill."""
    from lora_merge.core.output import check_output
    from lora_merge.core.output_kinds import SKILL_DATA
    from lora_merge.skilldata import build_skill, write_skill

    check_output(out, force, kind=SKILL_DATA, origin="--out")  # before any work
    d = build_skill(skill, seed, n_train, n_eval, system)
    names = write_skill(d, out, force=force)
    counts = d.counts()
    for f, split in names.items():
        click.echo(f"  {f:<28}{counts['train' if split == 'train' else 'eval/' + split]} rows")
    click.echo(f"wrote {out}/ (+ report.json); overlap with training: 0 in every split")


@data.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--against", type=click.Path(path_type=Path), default=None,
              help="A training file no eval prompt may repeat (normalised text).")
def validate_cmd(file: Path, against: Path | None) -> None:
    """Check a JSONL of training or eval rows (and, with --against, that it shares no prompt with training)."""
    from lora_merge.skilldata import validate_file

    v = validate_file(file, against)
    metrics = f" ({', '.join(f'{k}: {n}' for k, n in sorted(v.metrics.items()))})" if v.metrics else ""
    click.echo(f"{v.path}: {v.rows} valid {v.kind} rows{metrics}")
    if v.against is not None:
        click.echo(f"no prompt repeats {v.against}")
