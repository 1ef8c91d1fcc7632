"""The study's tables, plots and geometry, from the score store and the trained artefacts.

Rows take the miniature's shape (:class:`lora_merge.miniature.study.Row`) so its tables and plots are
reused as they are; the geometry of the task vectors (‖τ‖/‖θpre‖ and the cosines between every pair of
packs) comes from :func:`lora_merge.pack.interference.interference`, through the LoRA factors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lora_merge.miniature.study import Row

TABLE_KEY = {"general": "general", "science": "science", "coding": "coding", "safety_unsafe": "safety",
             "safety_lookalike": "lookalike"}


def table_scores(store, label: str) -> dict[str, float]:
    sets = store.data.get(label, {}).get("sets", {})
    return {TABLE_KEY.get(k, k): v["score"] for k, v in sets.items()}


def pack_geometry(adapters: Path, base: Path, names: list[str]) -> dict:
    """Norms of the packs' task vectors relative to ‖θpre‖, and the cosine of every pair."""
    from lora_merge.fold.plan import bind_packs, load_packs
    from lora_merge.io.fingerprint import read_config
    from lora_merge.io.tensors import WeightSet
    from lora_merge.miniature.geometry import base_norm
    from lora_merge.pack.interference import interference
    from lora_merge.pack.task_vector import TargetModel

    ws = WeightSet.open(base)
    target = TargetModel.from_weights(ws, read_config(base))
    vectors = [t.vector for t in bind_packs(load_packs([str(adapters / n) for n in names], adapters), target, None)]
    rep = interference(vectors, names, signs=False)
    gram = rep.overall.gram
    theta = base_norm(base)
    touched = math.sqrt(sum(float(ws.get(k).float().pow(2).sum()) for k in vectors[0].keys()))
    norms = {n: math.sqrt(float(gram[i, i])) for i, n in enumerate(names)}
    cos = {f"{a}·{b}": float(gram[i, j]) / (norms[a] * norms[b] or 1.0)
           for i, a in enumerate(names) for j, b in enumerate(names) if i < j}
    return {"theta_norm": theta, "touched_norm": touched, "norms": norms,
            "rel_norm": {n: v / theta for n, v in norms.items()},
            "rel_norm_touched": {n: v / touched for n, v in norms.items()}, "cosines": cos}


def model_geometry(folder: Path, start: Path, tau_general: dict, theta: float) -> tuple[float, float]:
    """(‖Δ‖/‖θpre‖, cos(τG, Δ)) of a trained model folder against the model it started from."""
    from lora_merge.miniature.geometry import cosine, dense_delta, norm

    delta = dense_delta(folder, start)
    return norm(delta) / theta, cosine(delta, tau_general)


def build_rows(run, geo: dict) -> tuple[list[Row], list[Row]]:
    """Per-skill rows and the several-skills rows, from whatever the run has scored so far."""
    from lora_merge.miniature.geometry import pack_delta

    store, cfg, rel, cos = run.store, run.cfg, geo["rel_norm"], geo["cosines"]
    tau_g = pack_delta(run.adapters / "general", run.general, run.base)
    theta = geo["theta_norm"]

    def cos_g(name: str) -> float | None:
        return cos.get(f"general·{name}")

    rows: list[Row] = []
    for skill in cfg.skills():
        if "θpre" in store.data:
            rows.append(Row(skill, "θpre", None, table_scores(store, "θpre")))
        rows.append(Row(skill, "θG", None, table_scores(store, "θG"), run.costs.get("general", {}),
                        rel.get("general"), 1.0))
        if f"θpre + τ {skill}" in store.data:
            rows.append(Row(skill, "θpre + τ (ω = 1)", 1.0, table_scores(store, f"θpre + τ {skill}"),
                            run.costs.get(skill, {}), rel.get(skill), cos_g(skill)))
        # CFT (with or without replay) starts at θG, RT at θpre: each update is measured from where it started
        for method, label, folder, start in (("CFT", f"CFT {skill}", f"{skill}-cft", run.general),
                                             ("CFT + replay", f"CFT + replay {skill}", f"{skill}-cft-replay", run.general),
                                             ("RT", f"RT {skill}", f"{skill}-rt", run.base)):
            if label in store.data and (run.models / folder).is_dir():
                r, c = model_geometry(run.models / folder, start, tau_g, theta)
                rows.append(Row(skill, method, None, table_scores(store, label), run.costs.get(folder, {}), r, c))
        for label, entry in store.data.items():
            meta = entry.get("meta", {})
            if meta.get("kind") == "ptm" and meta.get("skill") == skill:
                omega = meta["weights"][skill]
                rows.append(Row(skill, "PTM LoRA", omega, table_scores(store, label), run.costs.get(skill, {}),
                                rel.get(skill), cos_g(skill), "|D|/|G|" if meta.get("heuristic") else ""))
    three = [Row("all", "θG", None, table_scores(store, "θG"))]
    pair = ", ".join(f"{k} {v:+.3f}" for k, v in cos.items() if "general" not in k)
    for method in cfg.multi_methods:
        label = f"PTM all {method}"
        if label in store.data:
            steps = sum(run.costs.get(k, {}).get("steps", 0) for k in cfg.skills())
            three.append(Row("all", f"PTM LoRA {method}", None, table_scores(store, label), {"steps": steps}, None,
                             None, f"ω = |D|/|G| per skill; cos(τi, τj): {pair}"))
    rt = run.models / "all-rt"
    if "RT all" in store.data and rt.is_dir():
        r, c = model_geometry(rt, run.base, tau_g, theta)
        three.append(Row("all", "RT", None, table_scores(store, "RT all"), run.costs.get("all-rt", {}), r, c))
    return rows, three


def geometry_table(geo: dict) -> str:
    names = list(geo["norms"])
    lines = ["| vector | ‖τ‖ | ‖τ‖/‖θpre‖ (whole model) | ‖τ‖/‖θ‖ (LoRA-touched weights) |", "|---|---|---|---|"]
    for n in names:
        lines.append(f"| τ {n} | {geo['norms'][n]:.3f} | {geo['rel_norm'][n]:.5f} | {geo['rel_norm_touched'][n]:.5f} |")
    lines += ["", "| pair | cosine |", "|---|---|"]
    lines += [f"| {k} | {v:+.4f} |" for k, v in geo["cosines"].items()]
    return "\n".join(lines)


def write_study_report(run) -> dict[str, str]:
    """tables.md, tradeoff_<skill>.png, summary.png, results.json (miniature format) plus geometry and timings."""
    from lora_merge.miniature.report import write_report

    out = run.results
    geo = pack_geometry(run.adapters, run.base, ["general", *run.cfg.skills()])
    rows, three = build_rows(run, geo)
    record = {"model": run.cfg.model.name if not run.cfg.quick else "pico (quick mode)",
              "config": json.loads(run.cfg.model_dump_json()), "counts": run.data.counts, "costs": run.costs,
              "geometry": geo, "timings": run.timings}
    artefacts = write_report(out, rows, three, record)
    (out / "geometry.md").write_text(geometry_table(geo) + "\n")
    artefacts["geometry"] = str(out / "geometry.md")
    return artefacts
