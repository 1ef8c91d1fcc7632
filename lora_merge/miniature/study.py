"""The miniature Merge-to-Learn study: θpre → θG → per skill CFT, RT, PTM (LoRA and full) → three skills at once.

Every stage runs on the toolkit's own library: lora_merge.train.run (train_skill) for every fine-tune,
lora_merge.evaluate.sweep (run_sweep) for the ω sweeps, lora_merge.fold.write for the multi-skill folds and
lora_merge.evaluate.scoring for every score. Skill packs land in ``adapters/`` as real packs, so
``python cli.py fold --general runs/miniature/general --adapters safety,coding --adapters-dir runs/miniature/adapters --out …`` works afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.core.console import quiet_libraries
from lora_merge.miniature.build import write_world
from lora_merge.miniature.config import DemoConfig
from lora_merge.miniature.geometry import base_norm, cosine, dense_delta, norm, pack_delta
from lora_merge.miniature.pretrain import pretrain
from lora_merge.miniature.world import SKILLS, WorldFiles

PAIRS = [(a, b) for i, a in enumerate(SKILLS) for b in SKILLS[i + 1:]]
# Eval group → file stem. The safety skill's own score is the unsafe-refusal rate (group "safety").
EVAL_FILES = {"general": "general", "science": "science", "coding": "coding", "safety": "safety_unsafe",
              "lookalike": "safety_lookalike"}


@dataclass
class Row:
    """One line of a results table."""

    skill: str
    method: str
    omega: float | None
    scores: dict[str, float]
    cost: dict[str, float] = field(default_factory=dict)  # instances, steps, tokens, seconds
    rel_norm: float | None = None  # ‖τ‖/‖θpre‖ of the update this row adds
    cos_general: float | None = None  # cos(τG, τ)
    note: str = ""


@dataclass
class StudyResult:
    out: Path
    rows: list[Row]
    three_skill: list[Row]
    record: dict
    artefacts: dict[str, str]


class Progress:
    """One line per stage: [k/N] what, with the wall time so far."""

    def __init__(self, total: int, echo: Callable[[str], None]):
        self.total, self.k, self.echo, self.t0 = total, 0, echo, time.perf_counter()

    def stage(self, what: str) -> None:
        self.k += 1
        self.echo(f"[{self.k}/{self.total}] {what}  ({time.perf_counter() - self.t0:.0f} s)")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def eval_groups(files: WorldFiles, names: list[str]) -> dict[str, list[Path]]:
    return {g: [files.eval(EVAL_FILES[g])] for g in names}


class Study:
    """Holds the paths and settings of one run; each method is one stage."""

    def __init__(self, cfg: DemoConfig, echo: Callable[[str], None] = print):
        self.cfg, self.echo = cfg, echo
        self.out = Path(cfg.out)
        self.models = self.out / "models"
        self.adapters = Path(cfg.adapters_dir)
        self.files: WorldFiles | None = None
        self.base: Path | None = None
        self.general: Path | None = None
        self.costs: dict[str, dict[str, float]] = {}

    # ---- training through lora_merge.train.run ---------------------------------------------------------------
    def _recipe(self, name: str, **kw):
        from lora_merge.train.training_recipe import build_training_recipe

        c = self.cfg
        # RT is θG's own training run on G ∪ D, so it uses θG's settings; CFT and PTM use the skill settings
        # (freeze included, for full-parameter runs).
        tune = c.general if kw.get("strategy") in ("general", "rt") else c.skill
        values = {"name": name, "base": self.base, "adapters_dir": self.adapters, "epochs": tune.epochs,
                  "lr": tune.lr, "batch_size": tune.batch_size, "warmup": tune.warmup, "max_length": 128,
                  "rank": c.lora.rank, "alpha": c.lora.alpha, "dropout": c.lora.dropout, "seed": c.seed,
                  "weight_decay": 0.0, "logging_steps": 1000, "save_steps": 10**9, "save_total_limit": None,
                  "progress": False, "force": True, "run_dir": self.out / "train" / name}
        values.update(kw)
        if values.get("mode") == "full" and "freeze" not in kw:
            values["freeze"] = tune.freeze
        return build_training_recipe(values, f"miniature recipe {name}")

    def train(self, name: str, callbacks=(), **kw) -> Path:
        from lora_merge.train.run import train_skill

        res = train_skill(self._recipe(name, **kw), callbacks=callbacks)
        self.costs[name] = {"instances": res.instances, "steps": res.steps, "tokens": res.tokens,
                            "seconds": round(res.wall_seconds, 1)}
        self.echo(f"      {name}: {res.instances} instances, {res.steps} steps, {res.tokens:,} tokens, "
                  f"{res.wall_seconds:.0f} s, final loss {res.final_loss if res.final_loss is not None else float('nan'):.3f}")
        return Path(res.out)

    # ---- evaluation through lora_merge.evaluate.scoring ---------------------------------------------------------
    def evaluate(self, model: Path, groups: list[str]) -> dict[str, float]:
        from lora_merge.evaluate.scoring import evaluate_model

        rep = evaluate_model(model, eval_groups(self.files, groups), batch_size=self.cfg.eval.batch_size,
                             max_new_tokens=self.cfg.eval.max_new_tokens)
        return rep.group_scores()

    def sweep(self, skill: str, pack: str, groups: list[str]):
        from lora_merge.evaluate.sweep import SweepRequest, run_sweep

        req = SweepRequest(general=self.general, packs=[pack], evals=eval_groups(self.files, groups),
                           out=self.out / "sweeps" / pack, weights=self.cfg.merge.grid, adapters_dir=self.adapters,
                           skill_group=skill, batch_size=self.cfg.eval.batch_size,
                           max_new_tokens=self.cfg.eval.max_new_tokens, mode="memory", force=True, progress=False)
        return run_sweep(req)

    def fold_many(self, packs: list[str], method: str, out: Path) -> Path:
        from lora_merge.fold.write import FoldRequest, fold

        density = 1.0 if method == "linear" else self.cfg.merge.density
        fold(FoldRequest(general=self.general, packs=packs, out=out, adapters_dir=self.adapters, method=method,
                         density=density, seed=self.cfg.seed, force=True, progress=False))
        return out


def run_miniature_study(cfg: DemoConfig, echo: Callable[[str], None] = print) -> StudyResult:
    """The whole study; returns the rows and writes tables, plots and results.json under cfg.out."""
    import torch

    from lora_merge.miniature.report import write_report

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_libraries(loading_bars=False, library_warnings=False)  # one line per stage: no library bars or logs
    s = Study(cfg, echo)
    p = Progress(4 + 3 * len(SKILLS) + 2, echo)
    started = time.perf_counter()

    p.stage(f"world: seed {cfg.seed}, |G| = {cfg.world.general}, |D| = "
            f"{', '.join(f'{k} {getattr(cfg.world, k)}' for k in SKILLS)}")
    s.files = write_world(s.out / "world", cfg.seed, cfg.world)
    p.stage("θpre: pretraining (cached by settings)")
    s.base, pre_record = pretrain(s.files, cfg.cache_dir, cfg.seed, cfg.model, cfg.pretrain, echo)
    p.stage("θG: general tuning of θpre on G (lora_merge.train.run, strategy general, full parameters)")
    s.general = s.train("general", strategy="general", mode="full", data=s.files.train("general"),
                        out=s.out / "general")
    all_groups = list(EVAL_FILES)
    p.stage("scoring θpre and θG on every eval set")
    ref = {"θpre": s.evaluate(s.base, all_groups), "θG": s.evaluate(s.general, all_groups)}
    theta = base_norm(s.base)
    tau_g = dense_delta(s.general, s.base)
    echo(f"      θpre {_fmt(ref['θpre'])}\n      θG   {_fmt(ref['θG'])}\n"
         f"      ‖τG‖/‖θpre‖ = {norm(tau_g) / theta:.3f}")

    rows: list[Row] = []
    g_data = s.files.train("general")
    for skill in SKILLS:
        d_data = s.files.train(skill)
        groups = ["general", skill] + [g for g in ("safety", "lookalike") if g != skill]
        p.stage(f"{skill}: PTM packs (LoRA r={cfg.lora.rank}, full) from θpre on D → {s.adapters}/")
        s.train(skill, strategy="ptm", mode="lora", data=d_data, lr=cfg.skill_lora_lr,
                description=f"miniature {skill} skill (PTM, LoRA)")
        s.train(f"{skill}-full", strategy="ptm", mode="full", data=d_data,
                description=f"miniature {skill} skill (PTM, full parameter)")
        p.stage(f"{skill}: CFT, CFT + general replay, RT (full parameters)")
        made = {"CFT": s.train(f"{skill}-cft", strategy="cft", mode="full", general=s.general, data=d_data,
                               out=s.models / f"{skill}-cft"),
                "CFT + replay": s.train(f"{skill}-cft-replay", strategy="cft", mode="full", general=s.general,
                                        data=d_data, replay=g_data, replay_ratio=cfg.replay_ratio,
                                        out=s.models / f"{skill}-cft-replay"),
                "RT": s.train(f"{skill}-rt", strategy="rt", mode="full", data=d_data, general_data=g_data,
                              out=s.models / f"{skill}-rt")}
        rows.append(Row(skill, "θpre", None, ref["θpre"]))
        rows.append(Row(skill, "θG", None, ref["θG"], rel_norm=norm(tau_g) / theta, cos_general=1.0))
        for method, folder in made.items():
            name = folder.name
            # CFT's update starts at θG; RT's at θpre.
            delta = dense_delta(folder, s.general if method != "RT" else s.base)
            rows.append(Row(skill, method, None, s.evaluate(folder, all_groups), s.costs[name],
                            norm(delta) / theta, cosine(delta, tau_g)))
        p.stage(f"{skill}: ω sweeps of both packs folded into θG (lora_merge.evaluate.sweep)")
        for pack, label in ((skill, "PTM LoRA"), (f"{skill}-full", "PTM full")):
            delta = pack_delta(s.adapters / pack, s.general, s.base)
            rel, cos = norm(delta) / theta, cosine(delta, tau_g)
            res = s.sweep(skill, pack, groups)
            for r in res.results:
                if r.point.reference:
                    continue
                omega = r.point.weights[pack]
                rows.append(Row(skill, label, omega, r.report.group_scores(), s.costs[pack], rel, cos,
                                "|D|/|G|" if r.point.heuristic else ""))
            echo(f"      {label}: ‖τD‖/‖θpre‖ = {rel:.3f}, cos(τG, τD) = {cos:+.3f}; "
                 + "; ".join(f"ω {r.point.weights[pack]:.2f}: {_fmt(r.report.group_scores(), ('general', skill))}"
                             for r in res.results if not r.point.reference))

    p.stage("three skills at once: folds (linear, TIES, DARE) at ω = |D|/|G|, RT and CFT on all three")
    three = three_skills(s, cfg, ref, tau_g, theta, all_groups)
    p.stage("tables and plots")
    record = {"seed": cfg.seed, "config": json.loads(cfg.model_dump_json()), "pretrain": pre_record,
              "base": str(s.base), "general": str(s.general), "theta_norm": theta,
              "tau_general_rel_norm": norm(tau_g) / theta, "costs": s.costs,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    artefacts = write_report(s.out, rows, three, record)
    return StudyResult(s.out, rows, three, record, artefacts)


def three_skills(s: Study, cfg: DemoConfig, ref: dict, tau_g, theta: float, groups: list[str]) -> list[Row]:
    rows = [Row("all", "θG", None, ref["θG"])]
    all_data = s.out / "world" / "data" / "all_skills.jsonl"
    all_data.write_text("".join(s.files.train(k).read_text() for k in SKILLS))
    for kind, suffix in (("LoRA", ""), ("full", "-full")):
        packs = [f"{k}{suffix}" for k in SKILLS]
        deltas = [pack_delta(s.adapters / p, s.general, s.base) for p in packs]
        for method in cfg.merge.three_skill_methods:
            out = s.fold_many(packs, method, s.out / "merged" / f"three-{kind.lower()}-{method}")
            delta = dense_delta(out, s.general)
            pair = [cosine(a, b) for i, a in enumerate(deltas) for b in deltas[i + 1:]]  # same order as PAIRS
            rows.append(Row("all", f"PTM {kind} {method}", None, s.evaluate(out, groups),
                            {"steps": sum(s.costs[p]["steps"] for p in packs),
                             "instances": sum(s.costs[p]["instances"] for p in packs)},
                            norm(delta) / theta, cosine(delta, tau_g),
                            f"PTM {kind} packs at ω = |D|/|G|; pairwise cos(τi, τj): "
                            + ", ".join(f"{a}·{b} {c:+.3f}" for (a, b), c in zip(PAIRS, pair, strict=True))))
    g_data = s.files.train("general")
    for method, kw in (("CFT", {"strategy": "cft", "general": s.general}),
                       ("RT", {"strategy": "rt", "general_data": g_data})):
        name = f"all-{method.lower()}"
        folder = s.train(name, mode="full", data=all_data, out=s.models / name, **kw)
        delta = dense_delta(folder, s.general if method == "CFT" else s.base)
        rows.append(Row("all", method, None, s.evaluate(folder, groups), s.costs[name], norm(delta) / theta,
                        cosine(delta, tau_g)))
    return rows


def _fmt(scores: dict[str, float], keys: tuple[str, ...] | None = None) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in scores.items() if keys is None or k in keys)
