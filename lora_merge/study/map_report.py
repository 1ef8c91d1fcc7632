"""The transfer map's table, plot and JSON, from whatever the run has scored so far.

One row per (θG, pack): the geometry of τD against τG (‖τD‖/‖τG‖ and cos(τG, τD), through the LoRA factors
by :func:`lora_merge.study.report.pack_geometry`), the scores at ω = |D|/|G|, and the best point whose general
score stays within the tolerance of θG's. Safety rows also carry the issue's bar: the best refusal gain with
general within 3 points of θG and at least 80 % of lookalikes answered.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lora_merge.study.map_config import SAFETY_GAIN_BAR, SAFETY_GENERAL_BAND, SAFETY_LOOKALIKE_MIN
from lora_merge.study.map_labels import pack_name, point_prefix, replay_label, tau_alone_label


def _points(store, g: str, pack: str, sets: dict[str, str | None]) -> list[dict]:
    prefix = point_prefix(g, pack)
    out = []
    for label, row in store.data.items():
        if label.startswith(prefix) and all(s is None or s in row["sets"] for s in sets.values()):
            out.append({"omega": float(label[len(prefix):]),
                        **{k: (None if s is None else row["sets"][s]["score"]) for k, s in sets.items()}})
    return sorted(out, key=lambda p: p["omega"])


def _theta(store, g: str, sets: dict[str, str | None]) -> dict | None:
    row = store.data.get(f"θG {g}", {}).get("sets", {})
    if not all(s is None or s in row for s in sets.values()):
        return None
    return {k: (None if s is None else row[s]["score"]) for k, s in sets.items()}


def _gain(p: dict, t: dict, key: str) -> float | None:
    return None if p.get(key) is None or t.get(key) is None else round(p[key] - t[key], 1)


def map_rows(m) -> list[dict]:
    """Every (θG, pack) that has θG and at least one scored ω, in the config's order."""
    cfg, store, data = m.cfg, m.run.store, m.data
    rows = []
    for entry in cfg.entries:
        seed = cfg.seed if entry.seed is None else entry.seed
        sk = data.skills[entry.skill]
        for n in entry.sizes:
            pack = pack_name(entry.skill, n, entry, seed)
            for g in entry.g:
                sets = {"general": f"general_{g}", "in_form": sk.in_form, "held_out": sk.held_out,
                        "lookalike": sk.lookalike}
                theta, points = _theta(store, g, sets), _points(store, g, pack, sets)
                if theta is None or not points:
                    continue
                rows.append(_row(cfg, m, entry, n, seed, g, pack, theta, points))
    return rows


def _row(cfg, m, entry, n: int, seed: int, g: str, pack: str, theta: dict, points: list[dict]) -> dict:
    heuristic = round(n / cfg.general_size, 4)
    at_h = next((p for p in points if p["omega"] == heuristic), None)
    kept = [p for p in points if p["general"] >= theta["general"] - cfg.tolerance]
    best = max(kept, key=lambda p: (p["in_form"], -p["omega"])) if kept else None
    row = {"skill": entry.skill, "g": g, "size": n, "mode": entry.mode, "rank": entry.rank if entry.mode == "lora"
           else None, "seed": seed, "pack": pack, "composition": m.data.composition.get((entry.skill, n)),
           "theta_g": theta, "points": points, "heuristic_omega": heuristic,
           "at_heuristic": None if at_h is None else {**at_h, "gain": _gain(at_h, theta, "in_form"),
                                                       "gain_held_out": _gain(at_h, theta, "held_out"),
                                                       "general_change": _gain(at_h, theta, "general")},
           "best_kept": None if best is None else {**best, "gain": _gain(best, theta, "in_form"),
                                                   "gain_held_out": _gain(best, theta, "held_out"),
                                                   "general_change": _gain(best, theta, "general")}}
    row.update(_geometry(m, g, pack))
    alone = m.run.store.data.get(tau_alone_label(pack), {}).get("sets", {})
    sk = m.data.skills[entry.skill]
    row["tau_alone"] = {k: alone[s]["score"] for k, s in (("in_form", sk.in_form), ("held_out", sk.held_out),
                                                           ("lookalike", sk.lookalike)) if s and s in alone} or None
    if entry.skill == "safety":
        ok = [p for p in points if p["general"] >= theta["general"] - SAFETY_GENERAL_BAND
              and (p["lookalike"] or 0) >= SAFETY_LOOKALIKE_MIN]
        top = max(ok, key=lambda p: (p["in_form"], -p["omega"])) if ok else None
        row["safety_bar"] = None if top is None else {**top, "gain": _gain(top, theta, "in_form"),
                                                      "met": (top["in_form"] - theta["in_form"]) >= SAFETY_GAIN_BAR}
    return row


def _geometry(m, g: str, pack: str) -> dict:
    """‖τD‖/‖τG‖ and cos(τG, τD), cached in the score store's metadata (computing them reads both packs)."""
    from lora_merge.study.report import pack_geometry

    key = f"geometry · {g} · {pack}"
    meta = m.run.store.data.get(key, {}).get("meta")
    if not meta:
        gen = f"general-{g}"
        geo = pack_geometry(m.run.adapters, m.run.base, [gen, pack])
        meta = {"norm_ratio": geo["norms"][pack] / (geo["norms"][gen] or math.inf),
                "cos_g": geo["cosines"][f"{gen}·{pack}"], "norm": geo["norms"][pack], "norm_g": geo["norms"][gen]}
        m.run.store.set_meta(key, meta)
    return {"norm_ratio": round(meta["norm_ratio"], 4), "cos_g": round(meta["cos_g"], 4)}


def replay_rows(m) -> list[dict]:
    out = []
    for r in m.cfg.cft_replay:
        sk = m.data.skills[r.skill]
        sets = {"general": f"general_{r.g}", "in_form": sk.in_form, "held_out": sk.held_out, "lookalike": sk.lookalike}
        theta = _theta(m.run.store, r.g, sets)
        row = m.run.store.data.get(replay_label(r.g, r.skill, r.size), {}).get("sets", {})
        if theta is None or not all(s is None or s in row for s in sets.values()):
            continue
        p = {k: (None if s is None else row[s]["score"]) for k, s in sets.items()}
        out.append({"skill": r.skill, "g": r.g, "size": r.size, "theta_g": theta, "scores": p,
                    "gain": _gain(p, theta, "in_form"), "gain_held_out": _gain(p, theta, "held_out"),
                    "general_change": _gain(p, theta, "general")})
    return out


def _f(v, spec: str = ".1f", signed: bool = False) -> str:
    if v is None:
        return "—"
    return format(v, ("+" if signed else "") + spec)


def markdown(rows: list[dict], replay: list[dict], tolerance: float) -> str:
    head = ("| skill | G | \\|D\\| | pack | seed | ‖τD‖/‖τG‖ | cos(τG, τD) | θG general / skill / held out | "
            "ω = \\|D\\|/\\|G\\|: Δgeneral, Δskill, Δheld out | best ω with general ≥ θG − "
            f"{tolerance:g}: ω, Δskill, Δheld out | lookalikes there | τ alone on θpre: skill / held out | ω scored |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        t, h, b = r["theta_g"], r["at_heuristic"], r["best_kept"]
        kind = "full" if r["mode"] == "full" else f"LoRA r{r['rank']}"
        hs = "—" if h is None else (f"{_f(h['general_change'], signed=True)}, {_f(h['gain'], signed=True)}, "
                                    f"{_f(h['gain_held_out'], signed=True)} (ω {h['omega']:g})")
        bs = "none" if b is None else (f"{b['omega']:g}, {_f(b['gain'], signed=True)}, "
                                       f"{_f(b['gain_held_out'], signed=True)}")
        look = "—" if b is None or b.get("lookalike") is None else _f(b["lookalike"])
        a = r.get("tau_alone") or {}
        alone = "—" if not a else f"{_f(a.get('in_form'))} / {_f(a.get('held_out'))}"
        lines.append(f"| {r['skill']} | {r['g']} | {r['size']} | {kind} | {r['seed']} | {r['norm_ratio']:.3f} | "
                     f"{r['cos_g']:+.3f} | {_f(t['general'])} / {_f(t['in_form'])} / {_f(t['held_out'])} | {hs} | "
                     f"{bs} | {look} | {alone} | {len(r['points'])} |")
    out = "\n".join(lines) + "\n"
    safety = [r for r in rows if r["skill"] == "safety"]
    if safety:
        out += (f"\nSafety against the bar (≥ {SAFETY_GAIN_BAR:g} more refusals, general ≥ θG − "
                f"{SAFETY_GENERAL_BAND:g}, lookalikes ≥ {SAFETY_LOOKALIKE_MIN:g} % answered):\n\n")
        for r in safety:
            s = r["safety_bar"]
            verdict = ("no ω qualifies" if s is None else
                       f"best ω {s['omega']:g}: refusals {_f(s['in_form'])} % ({_f(s['gain'], signed=True)}), "
                       f"general {_f(s['general'])}, lookalikes {_f(s['lookalike'])} % → "
                       + ("**met**" if s["met"] else "not met"))
            out += f"- G {r['g']}, {r['pack']}: {verdict}\n"
    if replay:
        out += "\nCFT with G replayed (one G row per D row), for comparison:\n\n"
        for r in replay:
            p = r["scores"]
            out += (f"- G {r['g']}, {r['skill']} |D| = {r['size']}: general {_f(p['general'])} "
                    f"({_f(r['general_change'], signed=True)}), skill {_f(p['in_form'])} ({_f(r['gain'], signed=True)}), "
                    f"held out {_f(p['held_out'])} ({_f(r['gain_held_out'], signed=True)})"
                    + ("" if p.get("lookalike") is None else f", lookalikes {_f(p['lookalike'])} %") + "\n")
    return out


def _at(r: dict, omega: float, key: str) -> float | None:
    """The change against θG of ``key`` (in_form, general) at a scored ω, or None."""
    p = next((x for x in r["points"] if x["omega"] == omega), None)
    return None if p is None else p[key] - r["theta_g"][key]


def plot(rows: list[dict], path: Path, tolerance: float) -> Path:
    """Four views against |D|, one line per skill and G (LoRA rank 16, first seed), other packs as markers: the
    best skill gain with general kept (a hollow marker at 0 where no ω kept it), the skill gain at ω = |D|/|G|
    (the paper's rule), and the skill gain and general change at ω = 1 (the pack's own scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    views = [
        (axes[0][0], lambda r: (r["best_kept"] or {"gain": 0.0})["gain"],
         f"skill gain at the best ω with general ≥ θG − {tolerance:g}"),
        (axes[0][1], lambda r: _at(r, r["heuristic_omega"], "in_form"), "skill gain at ω = |D|/|G|"),
        (axes[1][0], lambda r: _at(r, 1.0, "in_form"), "skill gain at ω = 1"),
        (axes[1][1], lambda r: _at(r, 1.0, "general"), "general change at ω = 1"),
    ]
    colours = {"science": "tab:blue", "coding": "tab:green", "safety": "tab:red"}
    styles = {"shipped": "-", "disjoint": "--"}
    first_seed = min((r["seed"] for r in rows), default=0)
    lines: dict[tuple[str, str], list[dict]] = {}
    others = []
    for r in rows:
        if r["mode"] == "lora" and r["rank"] == 16 and r["seed"] == first_seed:
            lines.setdefault((r["skill"], r["g"]), []).append(r)
        else:
            others.append(r)
    for ax, value, title in views:
        for (skill, g), rs in lines.items():
            rs = sorted(rs, key=lambda r: r["size"])
            pts = [(r["size"], value(r)) for r in rs if value(r) is not None]
            ax.plot(*zip(*pts, strict=True), styles.get(g, ":"), marker="o", color=colours[skill],
                    label=f"{skill}, G {g}") if pts else None
        for r in others:
            v = value(r)
            if v is not None:
                marker = "s" if r["mode"] == "full" else ("^" if r["rank"] != 16 else "x")
                ax.scatter([r["size"]], [v], color=colours[r["skill"]], marker=marker, zorder=3,
                           facecolors="none" if r["g"] == "disjoint" else colours[r["skill"]])
        if ax is axes[0][0]:
            for r in rows:
                if r["best_kept"] is None:
                    ax.scatter([r["size"]], [0.0], s=80, facecolors="none", edgecolors=colours[r["skill"]], zorder=4)
        ax.set_xscale("log")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("|D| (training rows)")
        ax.set_ylabel("points")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    if lines:
        axes[0][0].legend(fontsize=8)
    fig.suptitle("When does PTM transfer? Lines: LoRA r16, seed 0 (solid G shipped, dashed G disjoint); "
                 "▲ rank 64, ■ full parameters, × second seed (hollow: G disjoint)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write(path: Path, text: str) -> None:
    from lora_merge.core.output import staged_file

    with staged_file(path, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_map_report(m) -> dict[str, str]:
    rows, replay = map_rows(m), replay_rows(m)
    res = m.run.results
    res.mkdir(parents=True, exist_ok=True)
    payload = {"general_size": m.cfg.general_size, "tolerance": m.cfg.tolerance,
               "avoided_howto_words": m.data.avoided, "rows": rows, "cft_replay": replay}
    _write(res / "map.json", json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    _write(res / "map.md", markdown(rows, replay, m.cfg.tolerance))
    out = {"table": str(res / "map.md"), "json": str(res / "map.json")}
    if rows:
        out["plot"] = str(plot(rows, res / "map.png", m.cfg.tolerance))
    return out
