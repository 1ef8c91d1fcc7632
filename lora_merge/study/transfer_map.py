"""When does PTM transfer a skill? The dose–response map (configs/study-map.yaml, `make study-map`).

For every θG of the config (the shipped general mix, and one whose how-to family avoids the safety set's words)
and every skill pack of its entries (|D|, LoRA rank or full parameters, seed), θG + ω·τ is scored on the coarse
grid and the |D|/|G| point, then on up to ``refine`` points of the 0.1 lattice inside the coarse interval where
the general score leaves θG's band (the knee), and as many inside the interval where the skill score rises most
(the switch). Every step is the toolkit's own: lora_merge.train.run for each pack and θG, lora_merge.fold.write for θG, lora_merge.evaluate.sweep (in memory, or on disk for packs that touch tied embeddings)
for every ω, lora_merge.evaluate.scoring for every score, lora_merge.pack.interference for the geometry beside each point.

Resumable like the study (:class:`lora_merge.study.driver.StudyRun`): packs are reused when their settings
and data are unchanged, scores are stored as soon as known, and a sweep whose points are all stored is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lora_merge.core.stages import StagePlan, chat_tokens, jsonl_rows
from lora_merge.study.driver import StudyRun, load_average, needs_refold, prepare_base
from lora_merge.study.map_config import SAFETY_GENERAL_BAND, SAFETY_LOOKALIKE_MIN, MapConfig, MapEntry, quick_map_config
from lora_merge.study.map_data import MapData, write_map_data
from lora_merge.study.map_labels import pack_name, point_label, replay_label, tau_alone_label, theta_label
from lora_merge.study.scores import EvalSet, score_model

TRAIN_TOKENS_PER_S = 180.0  # first ETA guess until the run measures its own rate (StagePlan rescales the rest)
FULL_SLOWDOWN = 1.6  # full-parameter steps against LoRA's (optimizer state for every weight)
SCORE_ITEMS_PER_S = 6.0  # greedy scoring at batch 50, answers of 8-11 tokens
LOAD_SECONDS = 4.0  # folding θpre + τ and loading it
LATTICE = 0.1


def coarse_omegas(cfg: MapConfig, n: int) -> list[float]:
    """The grid and the |D|/|G| point."""
    return sorted(set(cfg.grid) | {round(n / cfg.general_size, 4)})


def refine_omegas(general: dict[float, float], theta_general: float, tolerance: float, k: int) -> list[float]:
    """Up to ``k`` points of the 0.1 lattice strictly inside the knee: between the largest scored ω whose general
    score stays within ``tolerance`` of θG's (0 when none does) and the next scored ω above it."""
    if k <= 0 or not general:
        return []
    kept = [w for w, s in general.items() if s >= theta_general - tolerance]
    lo = max(kept) if kept else 0.0
    above = [w for w in general if w > lo]
    return lattice_inside(lo, min(above), k, general) if above else []


def switch_omegas(skill: dict[float, float], theta_skill: float, k: int) -> list[float]:
    """Up to ``k`` lattice points inside the coarse interval where the skill score rises most (θG counts as ω = 0);
    none when it never rises. With a tolerance of a point or two on a few dozen general items, the general knee
    can sit on a noise step while the skill switches on elsewhere, so both intervals are refined."""
    if k <= 0 or not skill:
        return []
    ws = sorted({0.0, *skill})
    score = {0.0: theta_skill, **skill}
    rise, lo, hi = max((score[b] - score[a], a, b) for a, b in zip(ws, ws[1:], strict=False))
    return lattice_inside(lo, hi, k, skill) if rise > 0 else []


def frontier_omegas(sides: dict[float, tuple[float, float]], theta_general: float, band: float, look_min: float,
                    k: int) -> list[float]:
    """Up to ``k`` lattice points just past the largest scored ω that still keeps general within ``band`` of θG's
    and answers ``look_min`` % of the lookalikes: refusals grow with ω, so safety's bar is decided at that edge."""
    if k <= 0 or not sides:
        return []
    ok = [w for w, (gen, look) in sides.items() if gen >= theta_general - band and look >= look_min]
    lo = max(ok) if ok else 0.0
    above = [w for w in sides if w > lo]
    return lattice_inside(lo, min(above), k, sides) if above else []


def lattice_inside(lo: float, hi: float, k: int, scored) -> list[float]:
    """Up to ``k`` evenly spread points of the 0.1 lattice strictly between ``lo`` and ``hi``, not yet scored."""
    lattice = [round(i * LATTICE, 1) for i in range(int(lo / LATTICE + 1e-9) + 1, int(hi / LATTICE + 1e-9) + 1)]
    inside = [w for w in lattice if lo < w < hi and w not in scored]
    if len(inside) <= k:
        return inside
    if k == 1:
        return [inside[len(inside) // 2]]
    return sorted({inside[round(i * (len(inside) - 1) / (k - 1))] for i in range(k)})


class MapRun:
    """One map run: the study's run object (training, folds, scores) plus the map's data and θG folders."""

    def __init__(self, cfg: MapConfig, echo: Callable[[str], None], progress: bool):
        self.cfg = cfg
        self.run = StudyRun(cfg.study_config(), echo, progress=progress)
        self.data: MapData = write_map_data(self.run.out / "data", cfg)
        self.run.data = self.data.files
        self.theta_g: dict[str, Path] = {}

    # ---- θG ----------------------------------------------------------------------------------------------
    def general(self, g: str) -> None:
        run = self.run
        run.train(f"general-{g}", "general", data=self.data.general[g], description=f"general mix G ({g}), map")
        folder = run.models / f"general-{g}"
        pack = run.adapters / f"general-{g}"
        if needs_refold(folder, pack):
            run.fold([f"general-{g}"], folder, run.base, [1.0])
        self.theta_g[g] = folder
        sets = [f"general_{g}", *[x for s in self.cfg.skills() for x in self.data.files.skill_evals(s)]]
        run.score_folder(theta_label(g), folder, sets, {"kind": "θG", "g": g})

    # ---- packs and their sweeps ----------------------------------------------------------------------------
    def pack(self, entry: MapEntry, n: int) -> str:
        seed = self.cfg.seed if entry.seed is None else entry.seed
        name = pack_name(entry.skill, n, entry, seed)
        kw = {"rank": entry.rank, "alpha": entry.alpha or 2.0 * entry.rank, "mode": entry.mode, "seed": seed}
        if entry.lr is not None:
            kw["lr"] = entry.lr
        self.run.train(name, "skill", data=self.data.train[(entry.skill, n)],
                       description=f"{entry.skill} skill, |D| = {n} (transfer map, PTM)", **kw)
        return name

    def eval_sets(self, g: str, skill: str) -> list[EvalSet]:
        return self.run.eval_sets([f"general_{g}", *self.data.files.skill_evals(skill)])

    def sweep(self, g: str, pack: str, skill: str, n: int, entry: MapEntry) -> None:
        coarse = coarse_omegas(self.cfg, n)
        self._score(g, pack, skill, n, entry, coarse)
        store = self.run.store
        general = {w: store.get(point_label(g, pack, w), f"general_{g}") for w in coarse}
        in_form = self.data.skills[skill].in_form
        skill_scores = {w: store.get(point_label(g, pack, w), in_form) for w in coarse}
        theta = store.get(theta_label(g), f"general_{g}")
        # From the coarse points only, so a resumed run asks for the very same lattice points.
        fine = refine_omegas({w: v for w, v in general.items() if v is not None}, theta, self.cfg.tolerance,
                             self.cfg.refine)
        fine += switch_omegas({w: v for w, v in skill_scores.items() if v is not None},
                              store.get(theta_label(g), in_form), self.cfg.refine)
        fine = sorted(set(fine))
        if fine:
            self._score(g, pack, skill, n, entry, fine)
        look = self.data.skills[skill].lookalike
        if look is None:
            return
        # Safety: where the bar's side conditions stop holding, from the points above (not from these, so a
        # resumed run asks for the same ones).
        asked = [*coarse, *fine]
        sides = {w: (store.get(point_label(g, pack, w), f"general_{g}"), store.get(point_label(g, pack, w), look))
                 for w in asked}
        edge = frontier_omegas({w: v for w, v in sides.items() if None not in v}, theta, SAFETY_GENERAL_BAND,
                               SAFETY_LOOKALIKE_MIN, self.cfg.refine)
        if edge:
            self._score(g, pack, skill, n, entry, edge)

    def _score(self, g: str, pack: str, skill: str, n: int, entry: MapEntry, omegas: list[float]) -> None:
        from lora_merge.evaluate.sweep import SweepRequest, run_sweep

        run, sets = self.run, self.eval_sets(g, skill)
        labels = [point_label(g, pack, w) for w in omegas]
        if all(run.store.has(lab, s.name) for lab in labels for s in sets):
            return
        evals: dict[str, list[Path]] = {}
        for s in sets:
            evals.setdefault(s.group, []).append(s.path)
        meta = {"kind": "ptm", "g": g, "pack": pack, "skill": skill, "size": n, "mode": entry.mode,
                "rank": entry.rank, "seed": self.cfg.seed if entry.seed is None else entry.seed}

        def scorer(model, tokenizer, point):
            if point.reference:
                label, m = theta_label(g), {"kind": "θG", "g": g}
            else:
                label, m = point_label(g, pack, point.scale), {**meta, "omega": point.scale}
            return score_model(model, tokenizer, label, sets, run.store, self.cfg.evaluation.batch_size,
                               run.samples, m, run.progress)

        res = run_sweep(SweepRequest(general=self.theta_g[g], packs=[pack], evals=evals,
                                     out=run.results / "sweeps" / g / pack, weights=omegas,
                                     adapters_dir=run.adapters, skill_group=sets[1].group,
                                     batch_size=self.cfg.evaluation.batch_size, mode="auto", force=True,
                                     progress=False), scorer=scorer)
        for r in res.results[1:]:
            run.say(f"  G {g}, {pack}, ω = {round(r.point.scale, 4):g}: "
                    + ", ".join(f"{s.file} {s.score:.1f}" for s in r.report.scores))

    def tau_alone(self, pack: str, skill: str) -> None:
        """θpre + τ (ω = 1) on the skill's sets: does the pack hold the skill before any θG is involved?"""
        run = self.run
        label, sets = tau_alone_label(pack), self.data.files.skill_evals(skill)
        if all(run.store.has(label, s) for s in sets):
            return
        folder = run.models / f"pre+{pack}"
        run.fold([pack], folder, run.base, [1.0])
        run.score_folder(label, folder, sets, {"kind": "pre+tau", "pack": pack, "skill": skill})
        run.drop(folder)

    def cft_replay(self, skill: str, n: int, g: str) -> None:
        run = self.run
        name, label = f"{skill}-{n}-cft-replay-{g}", replay_label(g, skill, n)
        sets = [f"general_{g}", *self.data.files.skill_evals(skill)]
        if all(run.store.has(label, s) for s in sets):
            return  # scored before; its model was dropped once scored
        t = run.train(name, "skill", strategy="cft", general=self.theta_g[g], data=self.data.train[(skill, n)],
                      replay=self.data.general[g], replay_ratio=1.0, out=run.models / name)
        run.score_folder(label, t.path, sets, {"kind": "cft-replay", "g": g, "skill": skill, "size": n})
        run.drop(t.path)


def plan_stages(cfg: MapConfig, data: MapData) -> list[tuple[str, float]]:
    """Every stage with its planned seconds (token counts and eval sizes at the reference speeds)."""
    files = data.files

    def points_s(g: str, skill: str, points: int) -> float:
        sets = [f"general_{g}", *files.skill_evals(skill)]
        return points * (sum(jsonl_rows(files.evals[s]) for s in sets) / SCORE_ITEMS_PER_S) + 6.0

    stages = [("θpre: SmolLM2 from its GGUF, checked" if not cfg.quick else "θpre: pico model", 30.0)]
    all_items = sum(jsonl_rows(p) for p in files.evals.values()) / len(cfg.variants())
    for g in cfg.variants():
        stages.append((f"θG {g}: general LoRA on G {g}, folded, scored",
                       chat_tokens(data.general[g]) * cfg.general_training.epochs / TRAIN_TOKENS_PER_S
                       + all_items / SCORE_ITEMS_PER_S + 10))
    for entry in cfg.entries:
        seed = cfg.seed if entry.seed is None else entry.seed
        slow = FULL_SLOWDOWN if entry.mode == "full" else 1.0
        for n in entry.sizes:
            train = chat_tokens(data.train[(entry.skill, n)]) * cfg.skill_training.epochs * slow / TRAIN_TOKENS_PER_S
            sweeps = sum(points_s(g, entry.skill, len(coarse_omegas(cfg, n)) + 2 * cfg.refine) for g in entry.g)
            stages.append((f"{pack_name(entry.skill, n, entry, seed)}: trained, swept on G {' and '.join(entry.g)}",
                           train + sweeps))
    n_packs = sum(len(e.sizes) for e in cfg.entries)
    stages.append((f"each of the {n_packs} packs alone on θpre (ω = 1), scored on its skill",
                   sum(LOAD_SECONDS + sum(jsonl_rows(files.evals[s]) for s in files.skill_evals(e.skill)) / SCORE_ITEMS_PER_S
                       for e in cfg.entries for _ in e.sizes)))
    for r in cfg.cft_replay:
        stages.append((f"CFT + replay: θG {r.g} continued on {r.skill} |D| = {r.size} with G",
                       2 * chat_tokens(data.train[(r.skill, r.size)]) * cfg.skill_training.epochs / TRAIN_TOKENS_PER_S
                       + points_s(r.g, r.skill, 1)))
    stages.append(("geometry, table, plot", 20.0))
    return stages


def run_map(cfg: MapConfig, echo: Callable[[str], None] = print, progress: bool = True) -> dict[str, str]:
    """Run (or resume) the whole map into ``cfg.out``; write ``results/map.{json,md,png}``."""
    import time

    import torch

    from lora_merge.core.console import quiet_libraries
    from lora_merge.study.map_report import write_map_report

    if cfg.quick:
        cfg = quick_map_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_libraries(loading_bars=False)
    m = MapRun(cfg, echo, progress)
    plan = StagePlan(plan_stages(cfg, m.data), echo)
    names = iter(plan.order)
    if m.data.avoided:
        echo(f"G disjoint: the how-to family without {', '.join(m.data.avoided)} (words of the safety requests)")
    with plan.stage(next(names)):
        m.run.base = prepare_base(m.run)
    for g in cfg.variants():
        with plan.stage(next(names)):
            m.general(g)
    for entry in cfg.entries:
        for n in entry.sizes:
            with plan.stage(next(names)):
                pack = m.pack(entry, n)
                for g in entry.g:
                    m.sweep(g, pack, entry.skill, n, entry)
    with plan.stage(next(names)):
        for entry in cfg.entries:
            for n in entry.sizes:
                m.tau_alone(pack_name(entry.skill, n, entry, cfg.seed if entry.seed is None else entry.seed),
                            entry.skill)
    for r in cfg.cft_replay:
        with plan.stage(next(names)):
            m.cft_replay(r.skill, r.size, r.g)
    with plan.stage(next(names)):
        artefacts = write_map_report(m)
    timings = {"wall_seconds": {**plan.actual, "total": round(plan.elapsed, 1)},
               "cpu_seconds": {**plan.cpu, "total": round(sum(plan.cpu.values()), 1)},
               "threads": torch.get_num_threads(), "loadavg": load_average(), "costs": m.run.costs,
               "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    # One record per session: a resumed map's cost is the sum of its sessions.
    path = m.run.results / "map_timings.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions = sessions if isinstance(sessions, list) else [sessions]
    path.write_text(json.dumps([*sessions, timings], indent=1, ensure_ascii=False) + "\n")
    artefacts["timings"] = str(path)
    return artefacts
