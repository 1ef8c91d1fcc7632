"""The Merge-to-Learn study on a real pretrained model: θpre → θG → skills by CFT, RT and PTM.

Every step runs on the toolkit itself: :func:`lora_merge.train.run.train_skill` for every fine-tune,
:func:`lora_merge.fold.write.fold` to build θG (θpre + the general LoRA, ω = 1) and the multi-skill folds,
:func:`lora_merge.evaluate.sweep.run_sweep` for the ω sweeps, :func:`lora_merge.evaluate.scoring.evaluate_model` for
every score and :func:`lora_merge.pack.interference.interference` for the geometry of the task vectors.
Tables and plots are the miniature study's (:mod:`lora_merge.miniature.report`).

The run is resumable: trained packs and models are reused when their settings are unchanged (a stamp
file records them), and every score is stored as soon as it is known (:mod:`lora_merge.study.scores`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.core.output import replace_file
from lora_merge.study.config import StudyConfig
from lora_merge.study.scores import EvalSet, ScoreStore, score_model, sweep_scorer
from lora_merge.study.tasks import StudyData, write_study_data


@dataclass
class Trained:
    path: Path
    cost: dict  # instances, steps, tokens, seconds


@dataclass
class StudyRun:
    """Paths and settings of one run; each method is one stage."""

    cfg: StudyConfig
    echo: Callable[[str], None] = print
    base: Path | None = None
    general: Path | None = None
    data: StudyData | None = None
    costs: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    progress: bool = False  # progress bars (with ETA) for every training run and eval set

    def __post_init__(self) -> None:
        self.out = Path(self.cfg.out)
        self.adapters = self.out / "adapters"
        self.models = self.out / "models"
        self.results = self.out / "results"
        self.store = ScoreStore.open(self.results / "scores.json")
        self.samples = self.results / "samples.jsonl"
        self.t0 = time.perf_counter()

    def say(self, what: str) -> None:
        self.echo(f"[{time.perf_counter() - self.t0:6.0f} s] {what}")

    # ---- training --------------------------------------------------------------------------------------
    def _recipe_values(self, name: str, kind: str, **kw) -> dict:
        t = self.cfg.general_training if kind == "general" else self.cfg.skill_training
        values = {"name": name, "base": self.base, "adapters_dir": self.adapters, "mode": "lora",
                  "epochs": t.epochs, "lr": t.lr, "rank": t.rank, "alpha": t.alpha, "batch_size": t.batch_size,
                  "max_length": t.max_length, "dropout": t.dropout, "seed": self.cfg.seed, "logging_steps": 1000,
                  "save_steps": 10**9, "save_total_limit": None, "progress": self.progress, "force": True,
                  "run_dir": self.out / "train" / name}
        if t.group_by_length:  # only when set, so the stamps of runs made before the option keep matching
            values["group_by_length"] = True
        values.update(kw)
        return values

    def train(self, name: str, kind: str, stamp_extra: dict | None = None, **kw) -> Trained:
        """Train one run with lora_merge.train.run, or reuse its output when the same settings made it before.

        ``stamp_extra`` adds what else decides the result to the settings' stamp (e.g. the base model's hashes).
        """
        from lora_merge.train.run import train_skill
        from lora_merge.train.training_recipe import build_training_recipe

        values = self._recipe_values(name, kind, **kw)
        target = Path(values.get("out") or self.adapters / name)
        stamp_path = self.out / "stamps" / f"{name}.json"
        extra = {"extra": json.dumps(stamp_extra, sort_keys=True)} if stamp_extra else {}
        stamp = settings_stamp(values | extra)
        if target.is_dir() and stamp_path.is_file():
            saved = json.loads(stamp_path.read_text())
            if saved.get("stamp") == stamp:
                self.costs[name] = saved["cost"]
                self.say(f"{name}: reusing {target} (same settings)")
                return Trained(target, saved["cost"])
        res = train_skill(build_training_recipe(values, f"study recipe {name}"))  # its own bar: steps, loss, ETA
        cost = {"instances": res.instances, "steps": res.steps, "tokens": res.tokens,
                "seconds": round(res.wall_seconds, 1), "final_loss": res.final_loss}
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        stamp_path.write_text(json.dumps({"stamp": stamp, "cost": cost}, indent=1))
        shutil.rmtree(values["run_dir"], ignore_errors=True)  # checkpoints are not needed once published
        self.costs[name] = cost
        self.say(f"{name}: {res.instances} instances, {res.steps} steps, {res.tokens:,} tokens in "
                 f"{res.wall_seconds:.0f} s ({res.tokens * max(res.epochs, 1e-9) / max(res.wall_seconds, 1e-9):.0f} "
                 f"tokens/s), final loss {res.final_loss}")
        return Trained(Path(res.out), cost)

    # ---- evaluation ------------------------------------------------------------------------------------
    def eval_sets(self, names: list[str]) -> list[EvalSet]:
        assert self.data is not None
        lengths = self.cfg.evaluation.max_new_tokens
        return [EvalSet(n, self.data.group(n), self.data.evals[n], lengths.get(n, lengths.get("default", 12)))
                for n in names]

    def all_sets(self) -> list[str]:
        assert self.data is not None
        return list(self.data.evals)

    def skill_sets(self, skill: str) -> list[str]:
        assert self.data is not None
        return [*self.general_sets(), *self.data.skill_evals(skill)]

    def general_sets(self) -> list[str]:
        """The sets every model is scored on: general, and where the data has them the chat sets and the probe."""
        assert self.data is not None
        return list(self.data.general_sets or ["general"])

    def score_folder(self, label: str, folder: Path, sets: list[str], meta: dict) -> dict[str, float]:
        from lora_merge.evaluate.scoring import load_model

        todo = [s for s in self.eval_sets(sets) if not self.store.has(label, s.name)]
        if todo:
            model, tok = load_model(folder)
            score_model(model, tok, label, todo, self.store, self.cfg.evaluation.batch_size, self.samples, meta,
                        self.progress)
            del model
        else:
            self.store.set_meta(label, meta)
        scores = {s: self.store.get(label, s) for s in sets}
        self.say(f"{label}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))
        return scores

    def sweep(self, skill: str) -> None:
        from lora_merge.evaluate.sweep import SweepRequest, run_sweep

        assert self.data is not None
        sets = self.eval_sets(self.skill_sets(skill))
        evals: dict[str, list[Path]] = {}
        for s in sets:
            evals.setdefault(s.group, []).append(s.path)
        req = SweepRequest(general=self.general, packs=[skill], evals=evals, out=self.results / "sweeps" / skill,
                           weights=self.cfg.grid, adapters_dir=self.adapters, general_size=self.data.counts["general"],
                           skill_group="safety" if skill == "safety" else skill,
                           batch_size=self.cfg.evaluation.batch_size, mode="memory", force=True, progress=False)
        res = run_sweep(req, scorer=sweep_scorer(self.store, skill, sets, self.cfg.evaluation.batch_size,
                                                 self.samples, self.progress))
        for r in res.results:
            self.say(f"  {r.report.model}: " + ", ".join(f"{s.file} {s.score:.1f}" for s in r.report.scores))

    def fold(self, packs: list[str], out: Path, general: Path, weights: list[float] | None, method: str = "linear"):
        from lora_merge.fold.write import FoldRequest, fold

        assert self.data is not None
        density = 1.0 if method == "linear" else self.cfg.multi_density
        return fold(FoldRequest(general=general, packs=packs, out=out, adapters_dir=self.adapters, weights=weights,
                                general_size=self.data.counts["general"], method=method, density=density,
                                seed=self.cfg.seed, force=True, progress=False))

    def drop(self, folder: Path) -> None:
        if not self.cfg.keep_models:
            shutil.rmtree(folder, ignore_errors=True)


def settings_stamp(values: dict) -> str:
    """A hash of a recipe's settings and of its data files' contents."""
    blob = {}
    for k, v in sorted(values.items()):
        if k in ("force", "progress", "run_dir"):
            continue
        if isinstance(v, Path) and v.is_file():
            blob[k] = hashlib.sha256(v.read_bytes()).hexdigest()
        else:
            blob[k] = str(v)
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def prepare_base(run: StudyRun, pre: Path | None = None) -> Path:
    """θpre: the real model converted from GGUF (checked against it), a given folder, or a pico model (quick).

    ``pre`` is the folder θpre is cached in (default ``OUT/pre``): the demo's seeds share one, since θpre is not
    a draw.
    """
    cfg = run.cfg
    pre = run.out / "pre" if pre is None else Path(pre)
    if cfg.quick:
        from lora_merge.study.quick import pico_base

        return pico_base(pre, cfg.seed)
    if cfg.model.folder is not None:
        return Path(cfg.model.folder)
    from lora_merge.study.prepare import prepare_model

    prep = prepare_model(pre, cfg.model.gguf_package, cfg.model.gguf_file, cfg.model.logits_atol)
    how = "cached, unchanged since its check" if prep.cached else "converted from GGUF"
    run.say(f"θpre: {prep.folder} ({how}); max |logit difference| against the GGUF-loaded model "
            f"{prep.max_logit_diff:.2e} (limit {cfg.model.logits_atol:g})")
    return prep.folder


def run_study(cfg: StudyConfig, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Run every stage (reusing what an earlier run with the same settings made); write tables and plots."""
    from lora_merge.study.report import write_study_report

    if cfg.quick:
        from lora_merge.study.quick import quick_config

        cfg = quick_config(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    run = StudyRun(cfg, echo)
    run.timings["uptime_start"] = load_average()
    stage = _stage_timer(run)

    with stage("prepare θpre"):
        run.base = prepare_base(run)
    with stage("data"):
        s = cfg.sizes
        run.data = write_study_data(run.out / "data", cfg.seed, cfg.general_families, s.general, s.skills,
                                    s.eval_general, s.eval_skill, s.eval_unsafe, cfg.system_prompt)
        run.say(f"data: {run.data.counts}")
    with stage("θG: general LoRA from θpre, folded into θpre with ω = 1"):
        run.train("general", "general", data=run.data.train["general"],
                  description="general instruction mix G (study)")
        run.general = run.models / "general"
        if needs_refold(run.general, run.adapters / "general"):
            run.fold(["general"], run.general, run.base, [1.0])
    with stage("skill packs (PTM: LoRA from θpre on D alone)"):
        for skill in cfg.skills():
            run.train(skill, "skill", data=run.data.train[skill], description=f"{skill} skill (study, PTM)")
    # Ordered by what the questions need most, so a run cut short still answers the main ones.
    with stage("θG on every eval set"):
        run.score_folder("θG", run.general, run.all_sets(), {"kind": "θG"})
    with stage("ω sweeps: θG + ω·τ (grid and |D|/|G|)"):
        for skill in cfg.skills():
            run.sweep(skill)
    _cft_stages(run, cfg, stage)
    with stage("several skills folded at once (ω = |D|/|G| each)"):
        for method in cfg.multi_methods:
            folder = run.models / f"all-{method}"
            label = f"PTM all {method}"
            if not all(run.store.has(label, x) for x in run.all_sets()):
                run.fold(cfg.skills(), folder, run.general, None, method)
            run.score_folder(label, folder, run.all_sets(), {"kind": "ptm-multi", "method": method})
            run.drop(folder)
    if cfg.tau_alone:
        with stage("each τ alone on θpre (does the pack hold the skill?)"):
            for skill in cfg.skills():
                folder = run.models / f"pre+{skill}"
                label = f"θpre + τ {skill}"
                sets = run.data.skill_evals(skill)
                if not all(run.store.has(label, x) for x in sets):
                    run.fold([skill], folder, run.base, [1.0])
                run.score_folder(label, folder, sets, {"kind": "pre+tau", "skill": skill})
                run.drop(folder)
    with stage("θpre on every eval set"):
        run.score_folder("θpre", run.base, run.all_sets(), {"kind": "θpre"})
    _rt_stages(run, cfg, stage)
    with stage("geometry and tables"):
        run.timings["uptime_end"] = load_average()
        run.timings["total_seconds"] = round(time.perf_counter() - run.t0, 1)
        artefacts = write_study_report(run)
    return artefacts


def needs_refold(folder: Path, source: Path) -> bool:
    """True when the folded model ``folder`` is missing or older than the pack ``source`` it was folded from
    (θG must be refolded from a retrained pack)."""
    from lora_merge.core.model_record import MODEL_RECORD

    if not (folder / "config.json").is_file():
        return True
    try:  # the fold writes its record fresh (config.json is copied from the base with the base's mtime)
        return (source / "skill.json").stat().st_mtime > (folder / MODEL_RECORD).stat().st_mtime
    except FileNotFoundError:
        return True


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def _stage_timer(run: StudyRun):
    from contextlib import contextmanager

    @contextmanager
    def stage(name: str):
        run.say(f"== {name}")
        t = time.perf_counter()
        try:
            yield
        finally:
            run.timings[name] = round(time.perf_counter() - t, 1)
            _write_json(run.results / "timings.json", run.timings)

    return stage


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, json.dumps(value, indent=1, ensure_ascii=False, default=str))


def _cft_stages(run: StudyRun, cfg: StudyConfig, stage) -> None:
    """CFT, and CFT with G replayed: θG continued on each skill's D."""
    with stage("CFT: θG continued on the skill"):
        for skill in cfg.cft_skills():
            t = run.train(f"{skill}-cft", "skill", strategy="cft", general=run.general,
                          data=run.data.train[skill], out=run.models / f"{skill}-cft")
            run.score_folder(f"CFT {skill}", t.path, run.skill_sets(skill), {"kind": "cft", "skill": skill})
    if cfg.cft_replay_skills():
        with stage("CFT + replay: θG continued on D with G replayed"):
            for skill in cfg.cft_replay_skills():
                t = run.train(f"{skill}-cft-replay", "skill", strategy="cft", general=run.general,
                              data=run.data.train[skill], replay=run.data.train["general"], replay_ratio=1.0,
                              out=run.models / f"{skill}-cft-replay")
                run.score_folder(f"CFT + replay {skill}", t.path, run.skill_sets(skill),
                                 {"kind": "cft-replay", "skill": skill})


def _rt_stages(run: StudyRun, cfg: StudyConfig, stage) -> None:
    """RT: θpre retrained on G ∪ D, for every skill at once and per skill."""
    if cfg.rt:
        with stage("RT: θpre retrained on G ∪ every D"):
            both = run.out / "data" / "data" / "all_skills.jsonl"
            both.write_text("".join(run.data.train[k].read_text() for k in cfg.skills()))
            t = run.train("all-rt", "general", strategy="rt", data=both, general_data=run.data.train["general"],
                          out=run.models / "all-rt")
            run.score_folder("RT all", t.path, run.all_sets(), {"kind": "rt"})
    if cfg.rt_skills():
        with stage("RT per skill: θpre retrained on G ∪ D"):
            for skill in cfg.rt_skills():
                t = run.train(f"{skill}-rt", "general", strategy="rt", data=run.data.train[skill],
                              general_data=run.data.train["general"], out=run.models / f"{skill}-rt")
                run.score_folder(f"RT {skill}", t.path, run.skill_sets(skill), {"kind": "rt", "skill": skill})
