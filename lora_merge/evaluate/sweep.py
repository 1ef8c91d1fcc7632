"""ω sweeps: fold each ω, evaluate it, plot the trade-off and recommend one ω.

For each point θ = θG + Σk ωk·τk is built and scored on the eval groups. The points are θG itself
(ω = 0, the reference), every ω of the grid (several packs share one scale: ωk = ω for all k), and,
when |D| and |G| are known, the heuristic point ωk = |Dk|/|G|. Models that fit in memory are loaded
once and each point is written into the loaded weights (θG + ω·τ from float32 copies); otherwise each
point is folded by the streamed fold into a temporary folder beside the output, evaluated from disk and
removed. Each folded point is compared with θG on the items both scored, per eval set and per group, with a
95 % paired interval (:mod:`lora_merge.evaluate.sweep_results`). Results (results.csv/json/md, samples.jsonl,
tradeoff.png) are written into a temporary folder renamed into place at the end, so an interrupted sweep leaves
nothing that looks complete. ``--write-recommendation`` stores the ω chosen by ``general-noninferior:X`` only,
with the rule, the tolerance and the intervals, into each pack after `pack verify`'s checks
(:mod:`lora_merge.pack.rewrite`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_merge.core import console
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.output import check_output, discard, new_temp_folder, write_files
from lora_merge.core.output_kinds import SWEEP
from lora_merge.evaluate.refusal import RefusalClassifier
from lora_merge.evaluate.report import EvalReport
from lora_merge.evaluate.scoring import check_device, evaluate_model, file_names_unique, load_model
from lora_merge.evaluate.sets import EvalFile, load_groups
from lora_merge.evaluate.sweep_results import (
    PointResult,
    Recommendation,
    SweepPoint,
    evidence,
    result_files,
    with_differences,
)
from lora_merge.evaluate.sweep_select import DEFAULT_RULE, NONINFERIOR, Candidate, Rule, parse_rule, select
from lora_merge.fold.plan import FoldPlan, plan_fold
from lora_merge.fold.request import FoldRequest
from lora_merge.fold.write import fold_plan
from lora_merge.io.numerics import check_folded
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.rewrite import check_rewritable, rewrite_manifests
from lora_merge.pack.skillpack import DEFAULT_REGISTRY, RecommendedWeight, SkillPack
from lora_merge.pack.task_vector import TargetModel, TaskVector
from lora_merge.rules.omega import PAPER_GRID

MAX_SWEEP_WEIGHT = 10.0
MEMORY_FACTOR = 3  # model + θG copies of the touched tensors + their float32 deltas


@dataclass
class SweepRequest:
    general: Path
    packs: Sequence[str]
    evals: Mapping[str, Sequence[Any]]
    out: Path
    weights: Sequence[float] = PAPER_GRID
    adapters_dir: Path = DEFAULT_REGISTRY
    general_size: int | None = None
    base: Path | None = None
    select: str = DEFAULT_RULE
    general_group: str = "general"
    skill_group: str | None = None
    batch_size: int = 8
    device: str = "cpu"
    limit: int | None = None
    max_new_tokens: int = 64
    classifier: RefusalClassifier | None = None
    mode: str = "auto"  # auto | memory | disk
    force: bool = False
    write_recommendation: bool = False
    verify: bool = True
    progress: bool = True
    allow_foreign_base: bool = False


@dataclass
class SweepResult:
    out: Path
    results: list[PointResult]
    recommendation: Recommendation
    mode: str
    warnings: list[str] = field(default_factory=list)


# A scorer turns a model at one point into a report; the default runs evaluate_model on the eval groups.
Scorer = Callable[[Any, Any, SweepPoint], EvalReport]


def check_grid(values: Sequence[float]) -> list[float]:
    out = sorted(set(float(v) for v in values))
    for v in out:
        if not (0.0 <= v <= MAX_SWEEP_WEIGHT):
            raise LoraMergeError(f"--weights: ω = {v:g} is outside the sweep's sane range [0, {MAX_SWEEP_WEIGHT:g}]")
    return out


def sweep_points(labels: Sequence[str], grid: Sequence[float], heuristic: Sequence[float] | None) -> list[SweepPoint]:
    """θG, the grid (a shared scale for all packs) and the |D|/|G| point (merged into an equal grid point)."""
    names = tuple(labels)
    points = [SweepPoint("θG", (0.0,) * len(names), names, 0.0, reference=True)]
    h = tuple(heuristic) if heuristic else None
    h_shared = h[0] if h and len(set(h)) == 1 else None
    for v in grid:
        if v == 0.0:
            continue
        same = h_shared is not None and abs(h_shared - v) < 1e-9
        points.append(SweepPoint(f"ω={v:g}", (v,) * len(names), names, v, heuristic=same))
        h = None if same else h
    if h:
        label = "|D|/|G| " + ",".join(f"{w:.3g}" for w in h)
        points.append(SweepPoint(label, h, names, h_shared, heuristic=True))
    return points


def skill_group_of(groups: Mapping[str, Sequence[EvalFile]], general: str, skill: str | None) -> str:
    if general not in groups:
        raise LoraMergeError(f"the sweep needs an eval group {general!r} (--evals {general}=PATH); got {', '.join(groups)}")
    if skill is not None:
        if skill not in groups:
            raise LoraMergeError(f"--skill-group {skill!r} is not among the eval groups {', '.join(groups)}")
        return skill
    others = [g for g in groups if g != general]
    if "skill" in others:
        return "skill"
    if len(others) == 1:
        return others[0]
    raise LoraMergeError(f"the sweep needs one skill group besides {general!r}: pass --evals skill=PATH, or "
                         f"--skill-group NAME to pick one of {', '.join(others) or 'none'}")


def run_sweep(req: SweepRequest, scorer: Scorer | None = None) -> SweepResult:
    """Evaluate θG, every ω of the grid and the |D|/|G| point; write the results and recommend an ω."""
    out = Path(req.out)
    eval_files = [f for fs in req.evals.values() for f in (fs if isinstance(fs, (list, tuple)) else [fs])
                  if isinstance(f, (str, os.PathLike))]  # eval sets given as files are inputs too
    check_output(out, req.force, [req.general, req.base, req.adapters_dir, *eval_files], kind=SWEEP, origin="--out")
    rule = parse_rule(req.select)
    if req.write_recommendation and not rule.stores:
        raise LoraMergeError(f"--write-recommendation stores an ω chosen by {NONINFERIOR}:X only (the general group's "
                             "95 % paired interval against θG has its lower bound ≥ −X points); --select "
                             f"{req.select} picks on point scores. Pass --select {NONINFERIOR}:X (default {DEFAULT_RULE})")
    grid = check_grid(req.weights)
    groups = load_groups(dict(req.evals))
    file_names_unique(groups)
    skill = skill_group_of(groups, req.general_group, req.skill_group)
    check_device(req.device)
    plan = plan_fold(FoldRequest(general=req.general, packs=req.packs, out=out, adapters_dir=req.adapters_dir,
                                 general_size=req.general_size, base=req.base, device=req.device, force=req.force,
                                 verify=req.verify, progress=False, weight_rule="size",
                                 allow_foreign_base=req.allow_foreign_base),
                     require_weights=False)  # the sweep's own reference point is |D|/|G|
    packs = plan.packs
    if not (Path(req.general) / "config.json").is_file():
        raise LoraMergeError(f"{req.general}: not a model folder (no config.json)")
    if req.write_recommendation:
        plain = [p.name for p in packs if p.manifest is None]
        if plain:
            raise LoraMergeError(f"--write-recommendation: pack(s) {', '.join(plain)} have no skill.json to write into; "
                                 "import them as skill packs first")
        check_rewritable([p.path for p in packs], "--write-recommendation")  # `pack verify`'s checks, before hours of work
    warnings = list(plan.warnings)
    heuristic = [t.weight.value for t in plan.terms] if plan.weights_chosen else None
    if heuristic is None:
        warnings.append("|G| or a pack's |D| is unknown: no ω = |D|/|G| point (pass --general-size)")
    points = sweep_points([t.label for t in plan.terms], grid, heuristic)

    if scorer is None:
        def scorer(model, tokenizer, point):
            return evaluate_model(model, groups, tokenizer=tokenizer, batch_size=req.batch_size, device=req.device,
                                  limit=req.limit, max_new_tokens=req.max_new_tokens, classifier=req.classifier,
                                  name=point.label)

    mode = choose_mode(req.mode, plan.general, plan.target, [t.vector for t in plan.terms], req.device)
    with console.bar(desc=f"sweep ({mode})", unit="ω", total=len(points), progress=req.progress) as bar:
        scored = _counted(scorer, bar)
        results = (_sweep_in_memory(req, plan, points, scored) if mode == "memory"
                   else _sweep_on_disk(plan, points, scored))

    results = with_differences(results)
    best, rec = _recommend(results, rule, req, skill, grid, warnings)
    files = result_files(results, rec, general=Path(req.general), general_group=req.general_group, skill=skill,
                         rule=rule, g_size=plan.general_size, mode=mode, warnings=warnings)
    write_files(out, files, req.force, kind=SWEEP, origin="--out")
    if req.write_recommendation:
        write_recommendations(packs, best.point.omegas, rec, f"--write-recommendation (the sweep's results are in {out})")
    return SweepResult(out, results, rec, mode, warnings)


def _recommend(results: Sequence[PointResult], rule: Rule, req: SweepRequest, skill: str, grid: Sequence[float],
               warnings: list[str]) -> tuple[PointResult, Recommendation]:
    """The point the rule picks, as a recommendation with its evidence, tolerance and intervals against θG."""
    general = req.general_group
    cands = []
    for r in results:
        d = r.group_difference(general)
        cands.append(Candidate(r.point.label, r.point.total, r.score(general), r.score(skill),
                               d.interval.low if d is not None else None))
    unmeasured = [r.point.label for r in results[1:] if r.group_difference(general) is None]
    if rule.kind == NONINFERIOR and unmeasured:
        warnings.append(f"{NONINFERIOR} needs every item's outcome (the eval report's samples), and the scorer kept "
                        f"none for {', '.join(unmeasured)}: those points cannot qualify")
    chosen = select(rule, cands[0], cands)
    best = results[[c.label for c in cands].index(chosen.label)]
    rec = Recommendation(best.point.label, dict(best.point.weights), rule.text,
                         evidence(best, results[0], general, skill, grid, Path(req.out)),
                         tolerance=rule.tolerance if rule.kind in (NONINFERIOR, "general-within") else None,
                         intervals=[d.to_dict() for d in best.differences or ()])
    if best.point.reference:
        warnings.append("no folded point satisfies the rule better than θG itself: the recommendation is ω = 0 "
                        "(do not fold this skill), or loosen --select")
    return best, rec


def choose_mode(requested: str, general: WeightSet, target: TargetModel, vectors: Sequence[TaskVector],
                device: str) -> str:
    """In memory when the model and the deltas fit (and no pack touches tied embeddings), else on disk."""
    if requested not in ("auto", "memory", "disk"):
        raise LoraMergeError(f"sweep mode {requested!r}: use auto, memory or disk")
    touches_tied = target.tied is not None and any(set(target.tied) & set(v.keys()) for v in vectors)
    if requested == "disk" or (requested == "auto" and touches_tied):
        return "disk"
    if requested == "memory":
        if touches_tied:
            raise LoraMergeError("a pack changes tied embeddings: the in-memory sweep cannot untie them; use disk mode")
        return "memory"
    need = MEMORY_FACTOR * general.total_bytes()
    return "memory" if need < 0.6 * _available_bytes(device) else "disk"


def _available_bytes(device: str) -> float:
    if device.startswith("cuda"):
        return float(torch.cuda.mem_get_info()[0])
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _counted(scorer: Scorer, bar) -> Scorer:
    """The scorer, moving the sweep's bar one ω point on and naming the point just scored."""

    def scored(model, tokenizer, point):
        bar.set_postfix_str(point.label, refresh=False)
        result = scorer(model, tokenizer, point)
        bar.update(1)
        return result

    return scored


def _sweep_in_memory(req: SweepRequest, plan: FoldPlan, points: Sequence[SweepPoint],
                     scorer: Scorer) -> list[PointResult]:
    """Each point written into the loaded model: θG + Σk ωk·τk from float32 copies, checked like the fold's output."""
    model, tokenizer = load_model(req.general, req.device)
    params = model.state_dict()
    vectors = [t.vector for t in plan.terms]
    keys = sorted({k for v in vectors for k in v.keys()})
    missing = [k for k in keys if k not in params]
    if missing:
        raise LoraMergeError(f"the loaded model names its weights differently from its files ({missing[:3]}); "
                             "rerun the sweep with --fold-mode disk")
    dev = next(model.parameters()).device
    theta_g = {k: params[k].detach().float().clone() for k in keys}
    deltas = [{k: v.delta(k, dev) for k in v.keys()} for v in vectors]  # pack reads refuse NaN/Inf (the plan)
    results = []
    for point in points:
        with torch.no_grad():
            for k in keys:
                acc = theta_g[k].clone()
                for w, d in zip(point.omegas, deltas, strict=True):
                    if w and k in d:
                        acc.add_(d[k], alpha=w)
                params[k].copy_(acc.to(params[k].dtype))
                check_folded(k, params[k])  # NaN/Inf, or overflow of the model's dtype, as the fold refuses
        results.append(PointResult(point, scorer(model, tokenizer, point)))
    return results


def _sweep_on_disk(plan: FoldPlan, points: Sequence[SweepPoint], scorer: Scorer) -> list[PointResult]:
    """Each point folded by the streamed fold into a scratch folder beside the output, evaluated, removed."""
    scratch = new_temp_folder(plan.request.out, kind="folds")  # a killed sweep's is cleaned by the next run
    results = []
    try:
        for i, point in enumerate(points):
            folder = scratch / f"point{i}"
            fold_plan(plan.reweighted(point.omegas, "sweep", out=folder, force=False))
            model, tokenizer = load_model(folder, plan.request.device)
            results.append(PointResult(point, scorer(model, tokenizer, point)))
            del model
            discard(folder)
    finally:
        discard(scratch)
    return results


def write_recommendations(packs: Sequence[SkillPack], omegas: Sequence[float], rec: Recommendation,
                          what: str = "--write-recommendation") -> None:
    """Store the chosen ω (one per pack, in order) with the rule, its tolerance, the intervals against θG and the
    evidence in each pack's skill.json: every pack first passes `pack verify`'s checks, then skill.json and
    README.md are staged and renamed, the hashes kept as verified (:func:`lora_merge.pack.rewrite.rewrite_manifests`)."""
    others = len(packs) > 1
    changes = []
    for p, value in zip(packs, omegas, strict=True):
        said = rec.evidence + (f"; swept together with {', '.join(q.name for q in packs if q is not p)}"
                               if others else "")
        changes.append((p.path, {"recommended_weight": RecommendedWeight(
            value=value, rule=rec.rule, evidence=said, tolerance=rec.tolerance, intervals=rec.intervals)}))
    rewrite_manifests(changes, what)
