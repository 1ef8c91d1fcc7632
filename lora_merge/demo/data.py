"""The demo's data: one function, so the source of the skills can be swapped in one place.

G (the general mix) and its eval set are the study's (:mod:`lora_merge.study.tasks`). The skills come from the
skill data layer (:mod:`lora_merge.skilldata`, docs/skills.md): science extracts a field from abstracts in
several layouts and wordings, with whole layouts and wordings held out; safety refuses Do-Not-Answer prompts and
is scored on held-back Do-Not-Answer prompts (in form) and on HarmBench behaviours and past-tense requests (held
out), with the project's lookalikes (safe prompts that look unsafe) answered or refused.

Each skill names its eval sets: ``in_form`` (the forms it trained on), ``held_out`` (forms it never saw) and
``lookalike`` (safe prompts where answering is right; None for skills without them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from lora_merge.miniature.build import write_jsonl
from lora_merge.study.config import StudyConfig
from lora_merge.study.tasks import LOOKALIKE_TRAIN_SHARE, SkillSets, StudyData, put_skill_evals, write_study_data


@dataclass(frozen=True)
class DemoData:
    files: StudyData  # training and eval files, counts; what lora_merge.study.driver.StudyRun reads
    skills: dict[str, SkillSets]
    source: str  # one line: where the rows come from
    reports: dict[str, dict]  # the skill data layer's report per skill (sources, licences, forms, overlap)


def _train_rows(name: str, rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` of the layer's training rows; safety keeps a fixed share of lookalike compliance rows."""
    if name != "safety":
        return rows[:n]
    rng = random.Random(f"demo:{name}:{seed}")
    look = [r for r in rows if str(r.get("id", "")).startswith("lookalike/")]
    refuse = [r for r in rows if not str(r.get("id", "")).startswith("lookalike/")]
    k = min(len(look), round(n * LOOKALIKE_TRAIN_SHARE))
    picked = rng.sample(look, k) + refuse[: n - k]
    rng.shuffle(picked)
    return picked


def in_form_cut(evals: dict[str, list[dict]], n: int | None, seed: str) -> dict[str, list[dict]]:
    """The skill's splits with its in-form split cut to ``n`` items, drawn by ``seed`` and kept in their order
    (the held-out split keeps every item: the rule needs more there)."""
    from lora_merge.skilldata import IN_FORM

    rows = evals[IN_FORM]
    if n is None or n >= len(rows):
        return evals
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return {**evals, IN_FORM: [rows[i] for i in keep]}


def demo_data(root: Path, cfg: StudyConfig) -> DemoData:
    """Write the training and eval files of ``cfg`` under ``root`` (same config → identical files)."""
    from lora_merge.skilldata import build_skill

    s = cfg.sizes
    general = write_study_data(root, cfg.seed, cfg.general_families, s.general, {}, s.eval_general, 1, 1,
                               cfg.system_prompt)
    train, evals, counts = dict(general.train), dict(general.evals), dict(general.counts)
    skills, skill_sets, groups, reports = {}, {}, {"general": "general"}, {}

    def put(name: str, group: str, rows: list[dict]) -> str:
        evals[name] = root / "evals" / f"{name}.jsonl"
        counts[f"eval/{name}"] = write_jsonl(evals[name], rows)
        groups[name] = group
        return name

    for name, n in s.skills.items():
        # Safety asks the layer for n refusal rows and takes its lookalike rows from what comes on top.
        data = build_skill(name, cfg.seed, n, s.eval_skill, cfg.system_prompt)
        reports[name] = data.report
        train[name] = root / "data" / f"{name}.jsonl"
        counts[name] = write_jsonl(train[name], _train_rows(name, data.train, n, cfg.seed))
        sets = put_skill_evals(name, in_form_cut(data.evals, s.eval_in_form, f"demo:{name}:{cfg.seed}"), put,
                               unseen_lookalikes_apart=True)
        skills[name] = sets
        skill_sets[name] = sets.names()
    files = StudyData(root, train, evals, counts, skill_sets, groups)
    source = ("G: the study's general mix (lora_merge/study/tasks.py); skills: the skill data layer "
              "(lora_merge/skilldata, docs/skills.md)")
    return DemoData(files, skills, source, reports)
