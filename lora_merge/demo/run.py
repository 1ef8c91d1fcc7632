"""The demo's pipeline on a real model: θpre → θG → per skill a PTM pack swept over ω, and CFT on the same data.

Every step is the study's (:class:`lora_merge.study.driver.StudyRun`: training with lora_merge.train.run, folding
with lora_merge.fold.write, the ω sweep with lora_merge.evaluate.sweep, scoring with lora_merge.evaluate.scoring); this module only
chooses which steps run, in what order, with a stage plan that prints an ETA. Outputs go under ``cfg.out``
only: packs in ``adapters/``, θG in ``general/``, eval and training files in ``data/`` and ``evals/``, scores
in ``results/``, and ``summary.json`` / ``summary.md`` / ``tradeoff_<skill>.png``. θpre is cached in ``pre/``
(kept between runs), and so is θG: like a user's own general model, it is built once and reused while θpre's
hashes, G and its settings are unchanged (the study's settings stamp), and so are θG's scores while θG, every eval
file and the scoring settings are unchanged. Everything else a previous run left there is removed first, so every
skill, sweep and their scores are fresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.core.console import quiet_libraries
from lora_merge.core.output import replace_file
from lora_merge.core.stages import StagePlan, chat_tokens, jsonl_rows
from lora_merge.demo.data import DemoData, demo_data
from lora_merge.study.config import StudyConfig
from lora_merge.study.driver import StudyRun, load_average, needs_refold, prepare_base

# First ETA guesses until the run measures its own rate: the plan rescales them by the pace the run actually
# keeps, so they only set the first estimate (where they came from: docs/benchmarks.md, "Figures the code cites").
TRAIN_TOKENS_PER_S = 180.0  # tokens counted by lora_merge.train.run (prompt + completion, per epoch)
SCORE_ITEMS_PER_S = 6.5  # items of every set the demo scores (toy answers, chat likelihoods, 24-token replies)
LOAD_SECONDS = 3.0  # loading or folding one model
PREPARE_SECONDS = {True: 2.0, False: 35.0}  # θpre cached (hashes checked) / converted from the GGUF
OWNED = ("adapters", "general", "models", "results", "data", "evals", "stamps", "train", "summary.json",
         "summary.md")
# θG between runs: its pack, its settings stamp and the folded model (reused only when the stamp matches), and its
# scores (reused only when θG's stamp, every eval file and the scoring settings match: the same greedy outputs)
GENERAL_SCORES = "stamps/general-scores.json"
PRE_SCORES = "stamps/pre-scores.json"  # θpre's, on the sets every model gets, while θpre and those sets are unchanged
KEPT = ("adapters/general", "stamps/general.json", "general", GENERAL_SCORES, PRE_SCORES)


@dataclass
class DemoRun:
    """What the demo produced: the study run (paths, score store, costs), its data and stage timings."""

    run: StudyRun
    data: DemoData
    timings: dict[str, float]
    summary: dict = field(default_factory=dict)  # rows, verdicts, plots (lora_merge.demo.summary.write_summary)

    @property
    def out(self) -> Path:
        return self.run.out


def quick_demo_config(cfg: StudyConfig) -> StudyConfig:
    """The test suite's demo: the study's quick mode (pico Llama, tiny sets) with the demo's ω points, one epoch."""
    from lora_merge.study.quick import quick_config

    small = quick_config(cfg)
    one = small.general_training.model_copy(update={"epochs": 1.0})
    return small.model_copy(update={"grid": cfg.grid, "general_training": one, "skill_training": one})


def clear_outputs(out: Path) -> None:
    """Remove what an earlier demo wrote into ``out`` but θpre's cache in ``pre/`` and θG (:data:`KEPT`)."""
    kept = {out / k for k in KEPT}
    for name in OWNED:
        _remove(out / name, kept)
    for p in out.glob("tradeoff_*.png"):
        p.unlink()


def _remove(p: Path, kept: set[Path]) -> None:
    if p in kept:
        return
    if p.is_dir() and not p.is_symlink():
        if any(k.is_relative_to(p) for k in kept):
            for child in p.iterdir():
                _remove(child, kept)
        else:
            shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def plan_stages(cfg: StudyConfig, data: DemoData, cached: bool) -> list[tuple[str, float]]:
    """The stages and their planned seconds, from the data's token counts and the eval sets' sizes."""
    files = data.files

    def train_s(name: str, epochs: float) -> float:
        return chat_tokens(files.train[name]) * epochs / TRAIN_TOKENS_PER_S + 2 * LOAD_SECONDS

    def score_s(sets: list[str], models: int = 1) -> float:
        return models * (sum(jsonl_rows(files.evals[s]) for s in sets) / SCORE_ITEMS_PER_S + LOAD_SECONDS)

    points = len(cfg.grid) + 1
    stages = [("θpre: SmolLM2 from its GGUF, checked" if not cfg.quick else "θpre: pico model", PREPARE_SECONDS[cached]),
              ("θG: general LoRA on G, folded into θpre", train_s("general", cfg.general_training.epochs))]
    stages += [(f"PTM pack: {k} (LoRA from θpre on D alone)", train_s(k, cfg.skill_training.epochs))
               for k in cfg.skills()]
    every = list(files.general_sets or ["general"])
    pre = "chat" in every
    stages.append(("θG" + (" and θpre" if pre else "") + " scored", score_s(list(files.evals)) + pre * score_s(every)))
    stages += [(f"{k}: θG + ω·τ for {points} values of ω, scored", score_s([*every, *files.skill_evals(k)], points))
               for k in cfg.skills()]
    stages += [(f"CFT: θG continued on {k}, scored", train_s(k, cfg.skill_training.epochs)
                + score_s([*every, *files.skill_evals(k)])) for k in cfg.cft_skills()]
    stages.append(("summary, plots and next commands", 2.0))
    return stages


def general_description(cfg: StudyConfig) -> str:
    """θG's pack description: what G holds, the self-distilled share named (its data card)."""
    s = cfg.sizes
    if not s.general_ordinary:
        return "general instruction mix G"
    return (f"general instruction mix G: {s.general - s.general_ordinary} rows of the toy families "
            f"({', '.join(cfg.general_families)}) and {s.general_ordinary} ordinary requests answered by θpre itself "
            "(self-distilled, greedy; lora_merge/skilldata/ordinary_answers.json)")


def scores_key(run: StudyRun, model_stamp: bytes, sets: list[str]) -> str:
    """What a cached model's scores depend on: the model (its settings stamp or weights' hashes), every eval file's
    bytes, the generation lengths, the batch size (padding) and the rule that judges refusals and lookalikes."""
    from lora_merge.evaluate.answered import RULE_ID

    h = hashlib.sha256(model_stamp)
    for s in run.eval_sets(sets):
        h.update(f"{s.name}:{s.max_new_tokens}:".encode() + hashlib.sha256(s.path.read_bytes()).digest())
    h.update(f"{run.cfg.evaluation.batch_size}:{RULE_ID}".encode())
    return h.hexdigest()


def score_cached(run: StudyRun, label: str, folder: Path, sets: list[str], cache: Path, key: str) -> None:
    """``label`` (θpre or θG) scored on ``sets``, or its scores from the last run when nothing they depend on changed."""
    saved = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    meta = {"kind": label}
    if saved.get("key") == key:
        for name, entry in saved["sets"].items():
            run.store.put(label, name, entry, meta)
        run.say(f"{label}: scores reused from the last run (same model, eval files and scoring settings; delete "
                f"{cache} to score it again)")
        return
    run.score_folder(label, folder, sets, meta)
    record = {"key": key, "sets": {s: run.store.data[label]["sets"][s] for s in sets}}
    replace_file(cache, json.dumps(record, ensure_ascii=False) + "\n")


def score_general(run: StudyRun) -> None:
    """θG on every eval set and, where the chat sets exist, θpre on the sets every model gets (both cached)."""
    from lora_merge.study.prepare import model_hashes

    key = scores_key(run, (run.out / "stamps" / "general.json").read_bytes(), run.all_sets())
    score_cached(run, "θG", run.general, run.all_sets(), run.out / GENERAL_SCORES, key)
    if "chat" in run.general_sets():
        stamp = json.dumps(model_hashes(run.base), sort_keys=True).encode()
        score_cached(run, "θpre", run.base, run.general_sets(), run.out / PRE_SCORES,
                     scores_key(run, stamp, run.general_sets()))


def run_demo(cfg: StudyConfig, echo: Callable[[str], None] = print, progress: bool = True,
             pre: Path | None = None, general_only: bool = False) -> DemoRun:
    """Run every stage of the demo into ``cfg.out`` (fresh, but for θpre's cache and a θG of the same inputs).

    ``pre``: where θpre is cached (default ``cfg.out/pre``); runs of several seeds pass one folder they share.
    ``general_only``: stop once θG is built and scored (and θpre beside it): check θG before folding anything.
    """
    import torch

    from lora_merge.demo.summary import write_summary
    from lora_merge.study.prepare import PREPARE_RECORD, model_hashes

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_libraries(loading_bars=False)  # the stage plan and the training bars are the progress
    out = Path(cfg.out)
    pre = out / "pre" if pre is None else Path(pre)
    clear_outputs(out)
    run = StudyRun(cfg, echo, progress=progress)
    data = demo_data(out, cfg)
    run.data = data.files
    cached = cfg.quick or (pre / PREPARE_RECORD).is_file()
    stages = plan_stages(cfg, data, cached)
    if general_only:
        stages = [st for st in stages if st[0].startswith(("θpre", "θG"))]
    plan = StagePlan(stages, echo)
    names = iter(plan.order)
    echo(f"data: {data.source}; {data.files.counts}")

    with plan.stage(next(names)):
        run.base = prepare_base(run, pre)
    with plan.stage(next(names)):
        run.train("general", "general", data=data.files.train["general"], description=general_description(cfg),
                  stamp_extra={"base_sha256": model_hashes(run.base)})
        run.general = out / "general"
        if needs_refold(run.general, run.adapters / "general"):
            run.fold(["general"], run.general, run.base, [1.0])
        else:
            run.say(f"θG: {run.general} reused from the last run (same θpre, G and settings; delete it and "
                    f"{run.adapters / 'general'} to build it again)")
    for skill in [] if general_only else cfg.skills():
        with plan.stage(next(names)):
            run.train(skill, "skill", data=data.files.train[skill], description=f"{skill} skill (demo, PTM)")
    with plan.stage(next(names)):
        score_general(run)
    if general_only:
        return DemoRun(run, data, {**plan.actual, "total": round(plan.elapsed, 1)})
    for skill in cfg.skills():
        with plan.stage(next(names)):
            run.sweep(skill)
    for skill in cfg.cft_skills():
        with plan.stage(next(names)):
            t = run.train(f"{skill}-cft", "skill", strategy="cft", general=run.general,
                          data=data.files.train[skill], out=run.models / f"{skill}-cft")
            run.score_folder(f"CFT {skill}", t.path, run.skill_sets(skill), {"kind": "cft", "skill": skill})
            run.drop(t.path)
    demo = DemoRun(run, data, plan.actual)
    with plan.stage(next(names)):
        demo.summary = write_summary(demo)
    demo.timings = {**plan.actual, "total": round(plan.elapsed, 1)}
    record = {"wall_seconds": demo.timings, "cpu_seconds": {**plan.cpu, "total": round(sum(plan.cpu.values()), 1)},
              "threads": torch.get_num_threads(), "loadavg": load_average(), "costs": run.costs}
    (out / "results" / "timings.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return demo
