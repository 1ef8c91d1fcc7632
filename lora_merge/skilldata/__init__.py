"""Skill data: training rows and ``in_form`` / ``held_out`` eval splits for safety, science and coding.

``build_skill(name, seed, n_train, n_eval, system_prompt)`` returns a :class:`SkillData` whose ``train`` rows
and ``evals[split]`` rows are in the project's training and eval formats, deterministic from the seed, with
every eval prompt checked absent from training by normalised text. See docs/skills.md.
"""

from lora_merge.skilldata.model import HELD_OUT, IN_FORM, SkillData, Source
from lora_merge.skilldata.registry import SKILLS, SkillSpec, build_skill, skill_spec
from lora_merge.skilldata.safety import LOOKALIKE_HELD_OUT, LOOKALIKE_IN_FORM
from lora_merge.skilldata.splits import normalise_text, overlap, prompt_text
from lora_merge.skilldata.validate import Validation, validate_file
from lora_merge.skilldata.write import write_skill

__all__ = ["HELD_OUT", "IN_FORM", "LOOKALIKE_HELD_OUT", "LOOKALIKE_IN_FORM", "SKILLS", "SkillData", "SkillSpec",
           "Source", "Validation", "build_skill", "normalise_text", "overlap", "prompt_text", "skill_spec",
           "validate_file", "write_skill"]
