"""ω sweeps: fold each ω, evaluate it, plot the trade-off and recommend one ω.

For each point θ = θG + Σk ωk·τk is built and scored on the eval groups. The points are θG itself
(ω = 0, the reference), every ω of the grid (several packs share one scale: ωk = ω for all k), and,
when |D| and |G| are known, the heuristic point ωk = |Dk|/|G|. Models that fit in memory are loaded
once and each point is written into the loaded weights (θG + ω·τ from float32 copies); otherwise each
point is folded by the streamed fold into a temporary folder beside the output, evaluated from disk and
removed. Results (results.csv/json/md, samples.jsonl, tradeoff.png) are written into a temporary folder
renamed into place at the end, so an interrupted sweep leaves nothing that looks complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_merge.core import console
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.output import check_output, discard, new_temp_folder, write_files
from lora_merge.evaluate.refusal import RefusalClassifier
from lora_merge.evaluate.report import EvalReport
from lora_merge.evaluate.scoring import check_device, evaluate_model, file_names_unique, load_model
from lora_merge.evaluate.sets import EvalFile, load_groups
from lora_merge.evaluate.sweep_select import Candidate, Rule, parse_rule, select
from lora_merge.evaluate.tradeoff_plot import PlotPoint, tradeoff_png
from lora_merge.fold.plan import FoldPlan, plan_fold
from lora_merge.fold.request import FoldRequest
from lora_merge.fold.write import fold_plan
from lora_merge.io.numerics import check_folded
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.skillpack import DEFAULT_REGISTRY, RecommendedWeight, SkillPack, write_manifest
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
    select: str = "general-within:1"
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


@dataclass(frozen=True)
class SweepPoint:
    label: str
    omegas: tuple[float, ...]  # ω per term of the plan, in order (packs are bound by position, never by name)
    packs: tuple[str, ...]  # the terms' unique display labels, for the tables
    scale: float | None  # the shared ω; None for the heuristic point when packs differ
    reference: bool = False
    heuristic: bool = False

    @property
    def weights(self) -> dict[str, float]:
        """ω per pack, by the pack's unique display label."""
        return dict(zip(self.packs, self.omegas, strict=True))

    @property
    def total(self) -> float:
        return sum(self.omegas)


@dataclass
class PointResult:
    point: SweepPoint
    report: EvalReport

    def score(self, group: str) -> float:
        return self.report.group_score(group)


@dataclass
class Recommendation:
    label: str
    weights: dict[str, float]
    rule: str
    evidence: str


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
    check_output(out, req.force, [req.general, req.base, req.adapters_dir])
    rule = parse_rule(req.select)
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

    ref = results[0]
    cands = [Candidate(r.point.label, r.point.total, r.score(req.general_group), r.score(skill)) for r in results]
    chosen = select(rule, cands[0], cands)
    best = results[[c.label for c in cands].index(chosen.label)]
    rec = Recommendation(best.point.label, dict(best.point.weights), rule.text,
                         _evidence(best, ref, req, skill, grid, out))
    if best.point.reference:
        warnings.append("no folded point satisfies the rule better than θG itself: the recommendation is ω = 0 "
                        "(do not fold this skill), or loosen --select")
    files = _result_files(results, rec, req, skill, rule, plan.general_size, mode, warnings)
    write_files(out, files, req.force)
    if req.write_recommendation:
        write_recommendations(packs, best.point.omegas, rec)
    return SweepResult(out, results, rec, mode, warnings)


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


def _evidence(best: PointResult, ref: PointResult, req: SweepRequest, skill: str, grid: Sequence[float],
              out: Path) -> str:
    g, s = best.score(req.general_group), best.score(skill)
    g0, s0 = ref.score(req.general_group), ref.score(skill)
    return (f"sweep of ω ∈ {{0, {', '.join(f'{v:g}' for v in grid)}}} (point {best.point.label}): "
            f"{req.general_group} {g:.2f} (θG {g0:.2f}, {g - g0:+.2f}), {skill} {s:.2f} (θG {s0:.2f}, {s - s0:+.2f}) "
            f"on a 0–100 scale; results in {out}")


def _result_files(results: Sequence[PointResult], rec: Recommendation, req: SweepRequest, skill: str, rule: Rule,
                  g_size: int | None, mode: str, warnings: list[str]) -> dict:
    names = list(results[0].point.packs)
    found = list(results[0].report.group_scores())
    groups = [req.general_group, skill] + [g for g in found if g not in (req.general_group, skill)]
    ref = results[0]
    table = []
    for r in results:
        row = {"point": r.point.label, "omega": r.point.scale,
               **{f"omega[{n}]": r.point.weights[n] for n in names},
               **{g: round(r.score(g), 4) for g in groups},
               f"delta_{req.general_group}": round(r.score(req.general_group) - ref.score(req.general_group), 4),
               f"delta_{skill}": round(r.score(skill) - ref.score(skill), 4),
               "reference": r.point.reference, "heuristic": r.point.heuristic,
               "recommended": r.point.label == rec.label}
        table.append(row)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    md = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    md += ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in table]
    md += ["", f"Scores: 0–100, higher is better. Recommended: **{rec.label}** by {rec.rule}.", "", rec.evidence]
    doc = {"general": str(req.general), "packs": names, "general_size": g_size, "mode": mode,
           "general_group": req.general_group, "skill_group": skill, "rule": rule.text,
           "recommendation": vars(rec), "rows": table, "warnings": warnings,
           "reports": {r.point.label: r.report.to_dict() for r in results}}
    samples = "".join(json.dumps({"point": r.point.label, **s}, ensure_ascii=False) + "\n"
                      for r in results for s in r.report.samples)
    plot = tradeoff_png(
        [PlotPoint(r.point.label, r.point.total, r.score(req.general_group), r.score(skill), r.point.reference,
                   r.point.heuristic, r.point.label == rec.label, off_scale=r.point.scale is None) for r in results],
        skill, req.general_group, f"{' + '.join(names)} folded into {Path(req.general).name}",
        rule.tolerance if rule.kind == "general-within" else None)
    return {"results.csv": buf.getvalue(), "results.md": "\n".join(md) + "\n",
            "results.json": json.dumps(doc, indent=2, ensure_ascii=False) + "\n", "samples.jsonl": samples,
            "tradeoff.png": plot}


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return "" if v is None else str(v).replace("|", "\\|")  # a pipe would end the markdown cell


def write_recommendations(packs: Sequence[SkillPack], omegas: Sequence[float], rec: Recommendation) -> None:
    """Store the chosen ω (one per pack, in order, with rule and evidence) in each pack's skill.json."""
    others = len(packs) > 1
    for p, value in zip(packs, omegas, strict=True):
        evidence = rec.evidence + (f"; swept together with {', '.join(q.name for q in packs if q is not p)}"
                                   if others else "")
        manifest = p.manifest.model_copy(update={"recommended_weight": RecommendedWeight(
            value=value, rule=rec.rule, evidence=evidence)})
        write_manifest(p.path, manifest)
