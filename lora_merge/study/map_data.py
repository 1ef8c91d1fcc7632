"""The transfer map's data: two general mixes G and nested skill sets D, with one set of eval files for all.

- G ``shipped`` is the study's general mix; G ``disjoint`` is the same mix whose how-to family ("how do i
  paint the fence ?" → "sure . you need a brush .") uses none of the verbs and objects that occur in the safety
  skill's harmful requests (training and eval), so G teaches no compliance on the very words safety refuses.
  Each G has its own general eval set (held-out instances of its own families).
- Each skill is built once at its largest |D| by the skill data layer (lora_merge/skilldata); a smaller D is a
  prefix of the larger one, so the dose axis adds data to the same rows rather than redrawing them. Safety keeps
  a third of each D as lookalikes answered helpfully (the demo's share) while the layer's lookalikes last; its
  D beyond that is refusals only, and the report says how many of each every D holds.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.miniature import vocab as V
from lora_merge.miniature.build import write_jsonl
from lora_merge.study.map_config import MapConfig
from lora_merge.study.tasks import LOOKALIKE_TRAIN_SHARE, SkillSets, StudyData, put_skill_evals, write_study_data


@dataclass(frozen=True)
class MapData:
    files: StudyData  # every eval file (general_<g>, the skills' splits) and the general training files
    general: dict[str, Path]  # G variant → its training rows
    skills: dict[str, SkillSets]
    train: dict[tuple[str, int], Path]  # (skill, |D|) → its training rows
    composition: dict[tuple[str, int], dict[str, int]]  # safety: refusal / lookalike rows per |D|
    avoided: list[str]  # the how-to words left out of G "disjoint"


def _is_lookalike(row: dict) -> bool:
    return str(row.get("id", "")).startswith("lookalike/")


def nested_rows(skill: str, rows: list[dict], n: int, seed: int) -> list[dict]:
    """The first ``n`` rows of a skill's D; for safety a third lookalikes while they last. D(n) ⊂ D(m) for n < m."""
    if skill != "safety":
        return rows[:n]
    look = [r for r in rows if _is_lookalike(r)]
    refuse = [r for r in rows if not _is_lookalike(r)]
    k = min(len(look), round(n * LOOKALIKE_TRAIN_SHARE))
    if n - k > len(refuse):
        k = n - len(refuse)
    picked = look[:k] + refuse[: n - k]
    random.Random(f"map:{skill}:{n}:{seed}").shuffle(picked)
    return picked


def howto_words_in(texts: list[str]) -> list[str]:
    """The how-to family's verbs and objects that occur as words in ``texts`` (lower-cased)."""
    words = set(re.findall(r"[a-z]+", " ".join(texts).lower()))
    return sorted(w for w in (*V.BENIGN_TOOLS, *V.BENIGN_OBJECTS) if w in words)


def write_map_data(root: Path, cfg: MapConfig) -> MapData:
    """Write every training and eval file of the map under ``root`` (same config → identical files)."""
    from lora_merge.skilldata import HELD_OUT, IN_FORM, build_skill

    train_general, evals, counts, groups = {}, {}, {}, {}
    built = {s: build_skill(s, cfg.seed, _layer_size(s, cfg), cfg.eval_skill, cfg.system_prompt)
             for s in cfg.skills()}
    if "safety" not in built and "disjoint" in cfg.variants():
        built["safety"] = build_skill("safety", cfg.seed, None, cfg.eval_skill, cfg.system_prompt)
    avoided: list[str] = []
    if "safety" in built:
        s = built["safety"]
        requests = [r["prompt"][-1]["content"] for r in s.train if not _is_lookalike(r)]
        requests += [r["messages"][-1]["content"] for k in (IN_FORM, HELD_OUT) for r in s.evals[k]]
        avoided = howto_words_in(requests)
    for g in cfg.variants():
        avoid = frozenset(avoided) if g == "disjoint" else frozenset()
        data = write_study_data(root / f"general-{g}", cfg.seed, cfg.general_families, cfg.general_size, {},
                                cfg.eval_general, 1, 1, cfg.system_prompt, howto_avoid=avoid)
        train_general[g] = data.train["general"]
        evals[f"general_{g}"], groups[f"general_{g}"] = data.evals["general"], "general"
        counts[f"general_{g}"] = counts["general"] = data.counts["general"]  # |G|, the same for every variant

    def put(name: str, group: str, rows: list[dict]) -> str:
        evals[name] = root / "evals" / f"{name}.jsonl"
        counts[f"eval/{name}"] = write_jsonl(evals[name], rows)
        groups[name] = group
        return name

    skills, skill_sets, train, composition = {}, {}, {}, {}
    for name in cfg.skills():
        data = built[name]
        sets = put_skill_evals(name, data.evals, put)
        skills[name] = sets
        skill_sets[name] = [x for x in (sets.in_form, sets.held_out, sets.lookalike) if x]
        sizes = sorted({n for e in cfg.entries if e.skill == name for n in e.sizes}
                       | {r.size for r in cfg.cft_replay if r.skill == name})
        for n in sizes:
            rows = nested_rows(name, data.train, n, cfg.seed)
            if len(rows) < n:
                raise LoraMergeError(f"map config: {name} has {len(rows)} training rows, fewer than |D| = {n}; "
                                     f"lower that size")
            path = root / "data" / f"{name}-{n}.jsonl"
            counts[f"{name}-{n}"] = write_jsonl(path, rows)
            train[(name, n)] = path
            look = sum(_is_lookalike(r) for r in rows)
            composition[(name, n)] = {"rows": len(rows), "lookalike": look, "refusal": len(rows) - look} \
                if name == "safety" else {"rows": len(rows)}
    files = StudyData(root, dict(train_general), evals, counts, skill_sets, groups)
    return MapData(files, train_general, skills, train, composition, avoided)


def _layer_size(skill: str, cfg: MapConfig) -> int | None:
    """How many training rows to ask the skill data layer for (safety: everything it has)."""
    return None if skill == "safety" else cfg.max_size(skill)
