"""The demo over several seeds (`cli.py demo --seeds N`): how far its gains move between fresh draws.

Each seed is a whole demo (:func:`lora_merge.demo.run.run_demo`) into ``OUT/seeds/seed-K/``: its own data, eval
items, θG (G is a draw) and packs, with θpre's cache ``OUT/pre`` shared, since θpre is no draw. The seeds are
``first_seed, first_seed + 1, …`` (default :data:`FIRST_SEED`, far from the seeds the settings were chosen on), and
the config's own seed is never among them. A seed whose ``summary.json`` exists and whose settings stamp
(``seed.json``) matches is not run again, so an interrupted run resumes and ``--seeds`` can grow.

``spread.json`` and ``spread.md`` then give, per skill, method (PTM at ω = \\|D\\|/\\|G\\|, CFT) and endpoint, each
seed's paired change against its own θG, their mean, sd and a t-interval for the mean (n − 1 degrees of freedom),
and on how many seeds the skill transferred under the config's rule.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.output import replace_file
from lora_merge.study.config import StudyConfig

# Seeds 0 and 2–6 were the demo's earlier draws (seed 2 chose the settings, seed 0's items were the map's, seed 3 is
# the config's); seed 103 once drew fresh science eval items to check a shortfall (docs/results.md, history). No
# setting was chosen on any draw from 100 on.
FIRST_SEED = 100
MIN_SEEDS = 2  # a spread needs two draws
SEEDS_DIR = "seeds"
STAMP_FILE = "seed.json"
ENDPOINTS = {"skill": "skill, in form", "skill_heldout": "skill, held-out forms", "general": "general",
             "lookalike": "lookalikes answered, trained categories",
             "lookalike_unseen": "lookalikes answered, unseen categories",
             "chat": "chat retained (nats/token)", "chat_answered": "ordinary requests answered"}
NATS = ("chat",)  # endpoints in nats per token (3 decimals); the others in points (1 decimal)
METHODS = ("PTM", "CFT")


@dataclass(frozen=True)
class MeanInterval:
    """The mean of n values with their sample sd and the t-interval for the mean (None below two values)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: the value a t variable with ``df`` degrees of freedom stays under with probability p."""
    from scipy.stats import t  # loaded only here: `demo --seeds` is its one user

    return float(t.ppf(p, df))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """mean ± t(1 − α/2, n − 1) · sd / √n, sd with n − 1 in the denominator."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return MeanInterval(n, mean, None, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return MeanInterval(n, mean, sd, mean - half, mean + half)


def seed_list(n: int, first: int, config_seed: int) -> list[int]:
    """The seeds to run, refused (clear error, nothing written) when fewer than two or the config's own is among them."""
    if n < MIN_SEEDS:
        raise LoraMergeError(f"--seeds {n}: a spread over seeds needs at least {MIN_SEEDS} (one draw is `demo` alone)")
    seeds = list(range(first, first + n))
    if config_seed in seeds:
        raise LoraMergeError(f"--first-seed {first} with --seeds {n} includes the config's own seed {config_seed}; "
                             f"the spread is over fresh draws: choose a --first-seed past {config_seed}")
    return seeds


def seed_stamp(cfg: StudyConfig) -> str:
    """What decides a seed's result: every setting but the folder it is written to and the CPU threads."""
    values = cfg.model_dump(mode="json", exclude={"out", "threads"})
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SeedsRun:
    """What `demo --seeds` produced: the folder, the seeds, which of them ran now, and the spread."""

    folder: Path
    seeds: list[int]
    ran: list[int] = field(default_factory=list)
    spread: dict = field(default_factory=dict)


def seed_config(cfg: StudyConfig, seed: int) -> StudyConfig:
    return cfg.model_copy(update={"seed": seed, "out": Path(cfg.out) / SEEDS_DIR / f"seed-{seed}"})


def is_done(cfg: StudyConfig) -> bool:
    """A seed's demo is done when its summary is of this seed and its stamp matches these settings."""
    out = Path(cfg.out)
    summary, stamp = out / "summary.json", out / STAMP_FILE
    if not (summary.is_file() and stamp.is_file()):
        return False
    try:
        saved, done = json.loads(stamp.read_text(encoding="utf-8")), json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved.get("stamp") == seed_stamp(cfg) and done.get("seed") == cfg.seed


def run_seeds(cfg: StudyConfig, n: int, first: int = FIRST_SEED, echo: Callable[[str], None] = print,
              progress: bool = True) -> SeedsRun:
    """Run (or reuse) the demo on ``n`` fresh seeds from ``first``; write spread.json and spread.md."""
    from lora_merge.demo.run import run_demo

    res = SeedsRun(Path(cfg.out) / SEEDS_DIR, seed_list(n, first, cfg.seed))
    pre = Path(cfg.out) / "pre"
    for i, seed in enumerate(res.seeds, 1):
        one = seed_config(cfg, seed)
        if is_done(one):
            echo(f"seed {seed} ({i} of {n}): reusing {one.out} (its summary.json and settings stamp match)")
            continue
        echo(f"seed {seed} ({i} of {n}): the demo into {one.out}")
        (Path(one.out) / STAMP_FILE).unlink(missing_ok=True)  # a run cut short never passes for done
        if one.quick:  # the pico θpre is built from the config's seed, as the single demo builds it, not a draw
            from lora_merge.study.quick import pico_base

            pico_base(pre, cfg.seed)
        run_demo(one, echo=echo, progress=progress, pre=pre)
        replace_file(Path(one.out) / STAMP_FILE, json.dumps({"seed": seed, "stamp": seed_stamp(one)}) + "\n")
        res.ran.append(seed)
    summaries = {s: json.loads((res.folder / f"seed-{s}" / "summary.json").read_text(encoding="utf-8"))
                 for s in res.seeds}
    res.spread = {"first_seed": first, "config_seed": cfg.seed, **spread(summaries, cfg.rule.confidence)}
    replace_file(res.folder / "spread.json", json.dumps(res.spread, indent=1, ensure_ascii=False) + "\n")
    replace_file(res.folder / "spread.md", spread_markdown(res.spread, cfg))
    return res


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def spread(summaries: dict[int, dict], confidence: float = 0.95) -> dict:
    """From each seed's summary.json: per skill, method and endpoint the per-seed Δ, mean, sd and t-interval."""
    seeds = sorted(summaries)
    skills: dict[str, dict] = {}
    for skill in summaries[seeds[0]]["skills"]:
        verdicts = {s: summaries[s]["skills"][skill] for s in seeds}
        entry: dict = {"omega": verdicts[seeds[0]]["omega"],
                       "transferred": {"count": sum(v["transferred"] for v in verdicts.values()), "of": len(seeds),
                                       "seeds": [s for s in seeds if verdicts[s]["transferred"]]}}
        for method in METHODS:
            rows = {s: _row(summaries[s]["rows"], skill, method, verdicts[s]["omega"]) for s in seeds}
            per_endpoint = {}
            for endpoint in ENDPOINTS:
                # one value per seed, in the order of "seeds" (None where a seed lacks it; n counts the others)
                per_seed = [(rows[s]["ci"] or {}).get(endpoint, {}).get("delta") if rows[s] else None for s in seeds]
                values = [v for v in per_seed if v is not None]
                if values:
                    m = mean_interval(values, confidence)
                    d = 4 if endpoint in NATS else 2
                    per_endpoint[endpoint] = {"per_seed": per_seed, "mean": _r(m.mean, d), "sd": _r(m.sd, d),
                                              "low": _r(m.low, d), "high": _r(m.high, d), "n": m.n}
            if per_endpoint:
                entry[method] = per_endpoint
        skills[skill] = entry
    return {"seeds": seeds, "confidence": confidence, "rule": summaries[seeds[0]]["rule"], "skills": skills}


def _row(rows: list[dict], skill: str, method: str, omega: float) -> dict | None:
    """PTM's row at the verdict's ω (|D|/|G|), or CFT's row, of one seed's summary."""
    return next((r for r in rows if r["skill"] == skill and r["method"] == method
                 and (method != "PTM" or r["omega"] == omega)), None)


def _num(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def spread_markdown(record: dict, cfg: StudyConfig) -> str:
    """spread.md: the table of per-seed changes with their mean and t-interval, then the verdicts' count."""
    seeds, pct = record["seeds"], f"{100 * record['confidence']:g} %"
    model = "a pico model (quick mode)" if cfg.quick else cfg.model.name
    md = [f"# make demo over {len(seeds)} seeds: Merge to Learn on {model}", "",
          f"Seeds {seeds[0]}–{seeds[-1]}: fresh draws of data, eval items and training order that no setting was "
          f"chosen on (the config's own seed {record['config_seed']} is not among them), each a whole demo in "
          f"`seed-K/`. Per seed: the change against that seed's θG, paired item by item (summary.json's Δ), for PTM "
          f"at ω = |D|/|G| and for CFT, in points (chat retained: in nats per token). Mean, sd (n − 1) and the {pct} t-interval for the mean "
          f"(n − 1 = {len(seeds) - 1} degree{'s' if len(seeds) > 2 else ''} of freedom): how far a result moves "
          "between draws.", "",
          f"| skill | method | endpoint | per seed | mean | sd | {pct} t-interval |", "|---|---|---|---|---|---|---|"]
    for skill, entry in record["skills"].items():
        for method in METHODS:
            for endpoint, e in entry.get(method, {}).items():
                where = f"PTM ω = {entry['omega']:g}" if method == "PTM" else method
                d = 3 if endpoint in NATS else 1
                ci = "—" if e["low"] is None else f"[{_num(e['low'], d)}, {_num(e['high'], d)}]"
                sd = "—" if e["sd"] is None else f"{e['sd']:.{d}f}"
                md.append(f"| {skill} | {where} | {ENDPOINTS[endpoint]} | "
                          f"{', '.join(_num(v, d) for v in e['per_seed'])} | {_num(e['mean'], d)} | {sd} | {ci} |")
    counts = "; ".join(f"{skill} on {e['transferred']['count']} of {e['transferred']['of']} seeds"
                       + (f" ({', '.join(map(str, e['transferred']['seeds']))})" if e["transferred"]["seeds"] else "")
                       for skill, e in record["skills"].items())
    md += ["", f"Transferred under the config's rule (PTM at ω = |D|/|G|; each seed's summary.md): {counts}."]
    return "\n".join(md) + "\n"
