"""The demo's data: one function, so the source of the skills can be swapped in one place.

G (the general mix) and its eval set are the study's (:mod:`lora_merge.study.tasks`). The skills come from the
skill data layer (:mod:`lora_merge.skilldata`, docs/skills.md): science extracts a field from abstracts in
several layouts and wordings, with whole layouts and wordings held out; safety refuses Do-Not-Answer prompts and
is scored on held-back Do-Not-Answer prompts (in form) and on HarmBench behaviours and past-tense requests (held
out), with the project's lookalikes (safe prompts that look unsafe) answered or refused.

G may also hold ordinary requests answered by θpre itself (``sizes.general_ordinary``,
:mod:`lora_merge.skilldata.ordinary`), and then every model is also scored on held-out ordinary requests: ``chat``
(θpre's answers' likelihood) and ``chat_answered`` (its own replies answered, not empty, echoed or a template);
``probe`` and ``probe_harmful`` (config ``probe: true``) are the template probe (:mod:`lora_merge.skilldata.probe`). These and ``general``
are the :data:`GENERAL_SETS`, scored for every model.

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
from lora_merge.train.data import chat_turns, read_json_lines

# The sets every model is scored on, those of them the config asks for.
GENERAL_SETS = ("general", "chat", "chat_answered", "probe", "probe_harmful")


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


def add_ordinary(general: Path, cfg: StudyConfig, put) -> int:
    """G's ordinary rows (θpre's answers) shuffled in with its toy rows; the held-out chat sets through ``put``.

    Returns |G|. The chat eval items are the same for every seed (:func:`~lora_merge.skilldata.ordinary.ordinary_split`).
    """
    from lora_merge.evaluate.sets import eval_row, unique_ids
    from lora_merge.skilldata.ordinary import ordinary_split
    from lora_merge.train.data import chat_training_row

    s, system = cfg.sizes, cfg.system_prompt
    train, held = ordinary_split(cfg.seed, s.general_ordinary, s.eval_chat)
    rows = read_json_lines(general)
    rows += [chat_training_row(r.prompt, r.answer, system) for r in train]
    random.Random(f"demo:G:{cfg.seed}").shuffle(rows)
    n = write_jsonl(general, rows)
    if held:
        put("chat", "chat", unique_ids({"messages": [*chat_turns(r.prompt, system),
                                                     {"role": "assistant", "content": r.answer}],
                                        "metric": "loss", "family": f"chat/{r.topic}"} for r in held))
        put("chat_answered", "chat_answered", unique_ids(eval_row(r.prompt, "", "compliance", f"chat/{r.topic}", system)
                                                         for r in held))
    return n


def demo_data(root: Path, cfg: StudyConfig) -> DemoData:
    """Write the training and eval files of ``cfg`` under ``root`` (same config → identical files)."""
    from lora_merge.skilldata import build_skill
    from lora_merge.skilldata.probe import probe_eval_sets

    s = cfg.sizes
    general = write_study_data(root, cfg.seed, cfg.general_families, s.general - s.general_ordinary, {},
                               s.eval_general, 1, 1, cfg.system_prompt)
    train, evals, counts = dict(general.train), dict(general.evals), dict(general.counts)
    skills, skill_sets, groups, reports = {}, {}, {"general": "general"}, {}

    def put(name: str, group: str, rows: list[dict]) -> str:
        evals[name] = root / "evals" / f"{name}.jsonl"
        counts[f"eval/{name}"] = write_jsonl(evals[name], rows)
        groups[name] = group
        return name

    if s.general_ordinary or s.eval_chat:
        counts["general"] = add_ordinary(train["general"], cfg, put)
        counts["general_ordinary"] = s.general_ordinary
    if cfg.probe:
        for name, rows in probe_eval_sets(cfg.system_prompt).items():
            put(name, "probe", rows)

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
    general_sets = [n for n in GENERAL_SETS if n in evals]
    files = StudyData(root, train, evals, counts, skill_sets, groups, general_sets)
    source = ("G: the study's general mix (lora_merge/study/tasks.py)"
              + (f" with {s.general_ordinary} ordinary requests answered by θpre (lora_merge/skilldata/ordinary.py)"
                 if s.general_ordinary else "") + "; skills: the skill data layer "
              "(lora_merge/skilldata, docs/skills.md)")
    return DemoData(files, skills, source, reports)
