"""A sweep's results: each point's scores and paired differences from θG, the recommendation, and the files.

Every folded point is compared with θG on the items both scored (:mod:`lora_merge.evaluate.paired`): per eval
set (a metric of a file) and per group, the difference on the 0–100 scale with its 95 % interval. The tables
show them (results.csv: a column triple ``delta``/``low``/``high`` per group and per eval set; results.md: the
per-group columns, then a table per eval set; results.json: every row with its ``differences``), and
tradeoff.png draws each point's intervals as error bars around it. A scorer that keeps no per-item outcomes
(samples) gives points without intervals: their cells stay empty.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.evaluate.paired import Difference, paired_differences
from lora_merge.evaluate.report import EvalReport
from lora_merge.evaluate.sweep_select import NONINFERIOR, Rule
from lora_merge.evaluate.tradeoff_plot import PlotPoint, tradeoff_png


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
    # From θG, per eval set then per group (lora_merge.evaluate.paired); None for θG itself, or without samples.
    differences: list[Difference] | None = None

    def score(self, group: str) -> float:
        return self.report.group_score(group)

    def group_difference(self, group: str) -> Difference | None:
        """The paired difference from θG of a whole group, if measured."""
        return next((d for d in self.differences or () if d.group == group and d.file is None), None)


@dataclass
class Recommendation:
    label: str
    weights: dict[str, float]
    rule: str
    evidence: str
    tolerance: float | None = None  # points, for the rules with a tolerance
    intervals: list[dict] = field(default_factory=list)  # the chosen point's differences from θG (Difference.to_dict)


def with_differences(results: Sequence[PointResult]) -> list[PointResult]:
    """Each folded point with its paired differences from θG (``results[0]``)."""
    ref = results[0]
    for r in results[1:]:
        r.differences = paired_differences(ref.report, r.report)
    return list(results)


def evidence(best: PointResult, ref: PointResult, general_group: str, skill: str, grid: Sequence[float],
             out: Path) -> str:
    """One sentence for skill.json and the tables: the chosen point's scores against θG's, with the intervals."""
    parts = []
    for group in (general_group, skill):
        v, v0 = best.score(group), ref.score(group)
        d = best.group_difference(group)
        ci = f", 95 % CI {d.interval.low:+.2f} to {d.interval.high:+.2f}" if d is not None else ""
        parts.append(f"{group} {v:.2f} (θG {v0:.2f}, {v - v0:+.2f}{ci})")
    n = best.group_difference(general_group)
    items = f", {n.interval.n} paired {general_group} items" if n is not None else ""
    return (f"sweep of ω ∈ {{0, {', '.join(f'{v:g}' for v in grid)}}} (point {best.point.label}): "
            f"{', '.join(parts)} on a 0–100 scale{items}; results in {out}")


def _set_key(d: Difference) -> str:
    return f"{d.group}/{d.file}:{d.metric}"


def _group_columns(r: PointResult, ref: PointResult, groups: Sequence[str]) -> dict:
    cols = {}
    for g in groups:
        d = r.group_difference(g)
        cols[f"delta_{g}"] = round(r.score(g) - ref.score(g), 4)
        cols[f"low_{g}"] = round(d.interval.low, 4) if d is not None else None
        cols[f"high_{g}"] = round(d.interval.high, 4) if d is not None else None
    return cols


def _set_columns(r: PointResult, keys: Sequence[str]) -> dict:
    by_key = {_set_key(d): d for d in r.differences or () if d.file is not None}
    cols = {}
    for k in keys:
        d = by_key.get(k)
        for name, v in (("delta", d and d.interval.delta), ("low", d and d.interval.low),
                        ("high", d and d.interval.high)):
            cols[f"{name}[{k}]"] = round(v, 4) if v is not None else None
    return cols


def result_files(results: Sequence[PointResult], rec: Recommendation, *, general: Path, general_group: str,
                 skill: str, rule: Rule, g_size: int | None, mode: str, warnings: list[str]) -> dict:
    """results.csv / .md / .json, samples.jsonl and tradeoff.png of a sweep, as {file name: content}."""
    names = list(results[0].point.packs)
    found = list(results[0].report.group_scores())
    groups = [general_group, skill] + [g for g in found if g not in (general_group, skill)]
    ref = results[0]
    keys = list(dict.fromkeys(_set_key(d) for r in results for d in r.differences or () if d.file is not None))
    table = [{"point": r.point.label, "omega": r.point.scale, **{f"omega[{n}]": r.point.weights[n] for n in names},
              **{g: round(r.score(g), 4) for g in groups}, **_group_columns(r, ref, groups),
              "reference": r.point.reference, "heuristic": r.point.heuristic, "recommended": r.point.label == rec.label}
             for r in results]
    buf = io.StringIO()
    rows = [{**row, **_set_columns(r, keys)} for row, r in zip(table, results, strict=True)]
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    doc = {"general": str(general), "packs": names, "general_size": g_size, "mode": mode,
           "general_group": general_group, "skill_group": skill, "rule": rule.text, "recommendation": vars(rec),
           "rows": [{**row, "differences": [d.to_dict() for d in r.differences or ()]}
                    for row, r in zip(table, results, strict=True)],
           "warnings": warnings, "reports": {r.point.label: r.report.to_dict() for r in results}}
    samples = "".join(json.dumps({"point": r.point.label, **s}, ensure_ascii=False) + "\n"
                      for r in results for s in r.report.samples)
    return {"results.csv": buf.getvalue(), "results.md": _markdown(table, results, rec),
            "results.json": json.dumps(doc, indent=2, ensure_ascii=False) + "\n", "samples.jsonl": samples,
            "tradeoff.png": _plot(results, rec, general, general_group, skill, rule, names)}


def _markdown(table: Sequence[dict], results: Sequence[PointResult], rec: Recommendation) -> str:
    md = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    md += ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in table]
    md += ["", f"Scores: 0–100, higher is better. delta/low/high: the point − θG on the items both scored, with its "
               f"95 % paired interval. Recommended: **{rec.label}** by {rec.rule}.", "", rec.evidence]
    sets = [(r, d) for r in results for d in r.differences or () if d.file is not None]
    if sets:
        md += ["", "Per eval set, the point − θG:", "",
               "| point | group | file | metric | n | θG | point | Δ | 95 % interval | method |",
               "|---|---|---|---|---:|---:|---:|---:|---|---|"]
        md += [f"| {_cell(r.point.label)} | {_cell(d.group)} | {_cell(d.file)} | {d.metric} | {d.interval.n} | "
               f"{d.baseline:.2f} | {d.candidate:.2f} | {d.interval.delta:+.2f} | "
               f"{d.interval.low:+.2f} to {d.interval.high:+.2f} | {d.interval.method} |" for r, d in sets]
    return "\n".join(md) + "\n"


def _plot(results: Sequence[PointResult], rec: Recommendation, general: Path, general_group: str, skill: str,
          rule: Rule, names: Sequence[str]) -> bytes:
    ref = results[0]

    def bounds(r: PointResult, group: str) -> tuple[float, float] | None:
        d = r.group_difference(group)
        return None if d is None else (ref.score(group) + d.interval.low, ref.score(group) + d.interval.high)

    points = [PlotPoint(r.point.label, r.point.total, r.score(general_group), r.score(skill), r.point.reference,
                        r.point.heuristic, r.point.label == rec.label, off_scale=r.point.scale is None,
                        general_ci=bounds(r, general_group), skill_ci=bounds(r, skill)) for r in results]
    band = rule.tolerance if rule.kind in (NONINFERIOR, "general-within") else None
    return tradeoff_png(points, skill, general_group, f"{' + '.join(names)} folded into {Path(general).name}", band,
                        noninferior=rule.kind == NONINFERIOR)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return "" if v is None else str(v).replace("|", "\\|")  # a pipe would end the markdown cell
