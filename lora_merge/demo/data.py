"""The demo's data: one function, so the source of the skills can be swapped in one place.

Each skill names the eval sets that score it: ``in_form`` (the forms it trained on), ``held_out`` (forms
it never saw; None where the source has none) and ``lookalike`` (safe prompts that look like the skill's,
where answering is right; None for skills without them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_merge.study.config import StudyConfig
from lora_merge.study.tasks import LOOKALIKE_SET, UNSAFE_SET, StudyData, write_study_data


@dataclass(frozen=True)
class SkillSets:
    """The eval sets that score one skill."""

    in_form: str
    held_out: str | None = None
    lookalike: str | None = None


@dataclass(frozen=True)
class DemoData:
    files: StudyData  # training and eval files, counts; what lora_merge.study.driver.StudyRun reads
    skills: dict[str, SkillSets]
    source: str  # one line: where the rows come from


def demo_data(root: Path, cfg: StudyConfig) -> DemoData:
    """Write the training and eval files of ``cfg`` under ``root`` (same config → identical files)."""
    s = cfg.sizes
    files = write_study_data(root, cfg.seed, cfg.general_families, s.general, s.skills, s.eval_general,
                             s.eval_skill, s.eval_unsafe, cfg.system_prompt)
    skills = {k: SkillSets(UNSAFE_SET, None, LOOKALIKE_SET) if k == "safety" else SkillSets(k)
              for k in cfg.skills()}
    return DemoData(files, skills, "the study's task generators (lora_merge/study/tasks.py): one template per skill; "
                                   "no held-out forms")
