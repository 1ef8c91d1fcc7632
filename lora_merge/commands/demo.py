"""`demo`: the miniature Merge-to-Learn study (configs/demo.yaml) end to end on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

import click

DEFAULT_CONFIG = Path("configs/demo.yaml")


@click.command("demo")
@click.option("--config", "config_path", default=str(DEFAULT_CONFIG), show_default=True,
              type=click.Path(path_type=Path), help="Study settings (YAML).")
@click.option("--quick", is_flag=True, help="Tiny sizes (the test suite's run): the same pipeline in about a minute.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default from the config).")
@click.option("--adapters-dir", type=click.Path(path_type=Path), default=None,
              help="Where the skill packs go (default from the config: adapters/).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Cache of pretrained bases.")
@click.option("--seed", type=int, default=None, help="World and training seed (default from the config).")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
def demo_cmd(config_path: Path, quick: bool, out, adapters_dir, cache_dir, seed, threads) -> None:
    """Run the miniature study: θpre, θG, CFT / RT / PTM per skill, ω sweeps, three skills folded at once."""
    from lora_merge.miniature.config import load_config
    from lora_merge.miniature.study import run_study

    overrides = {"out": out, "adapters_dir": adapters_dir, "cache_dir": cache_dir, "seed": seed, "threads": threads}
    cfg = load_config(config_path if config_path.exists() or config_path != DEFAULT_CONFIG else None, quick,
                      {k: v for k, v in overrides.items() if v is not None})
    started = time.perf_counter()
    res = run_study(cfg, echo=click.echo)
    click.echo("")
    click.echo(Path(res.artefacts["tables"]).read_text())
    click.echo(f"done in {time.perf_counter() - started:.0f} s")
    for name, path in res.artefacts.items():
        click.echo(f"  {name:<16} {path}")
    click.echo(f"  {'general model':<16} {res.record['general']}")
    click.echo(f"  {'skill packs':<16} {cfg.adapters_dir}/{{science,coding,safety}} (LoRA), …-full (dense)")
    click.echo(f"try: python cli.py fold --general {res.record['general']} --adapters safety,coding "
               f"--adapters-dir {cfg.adapters_dir} --out {res.out / 'merged' / 'safety+coding'}")


COMMANDS = [demo_cmd]
