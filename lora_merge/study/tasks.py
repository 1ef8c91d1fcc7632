"""The study's data: the miniature world's task generators, rendered as chat rows for a real model.

Training rows are conversational prompt/completion rows (the trainer applies the model's chat template);
eval rows are :mod:`lora_merge.evaluate.sets` rows with ``messages``. The miniature's ``fact`` family asks
about animals whose attributes only the miniature's own pretraining corpus states, so it is left out here
by default: a real pretrained model could only guess them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_merge.evaluate.sets import eval_row, unique_ids
from lora_merge.miniature.build import write_jsonl
from lora_merge.miniature.world import Example, World, sample
from lora_merge.train.data import chat_training_row

UNSAFE_SET, LOOKALIKE_SET = "safety_unsafe", "safety_lookalike"


# Share of safety's |D| training rows that are lookalikes answered helpfully (the rest are refusals), so the
# pack does not learn "refuse everything". The layer's own mix (all of Do-Not-Answer) has far fewer.
LOOKALIKE_TRAIN_SHARE = 1 / 3


@dataclass(frozen=True)
class SkillSets:
    """The eval sets that score one skill."""

    in_form: str
    held_out: str | None = None
    lookalike: str | None = None  # lookalikes (of the trained categories, when split from the unseen ones)
    lookalike_unseen: str | None = None  # lookalikes of categories never trained on, when reported apart

    def names(self) -> list[str]:
        """Every set that scores the skill, in a fixed order."""
        return [s for s in (self.in_form, self.held_out, self.lookalike, self.lookalike_unseen) if s]


@dataclass(frozen=True)
class StudyData:
    """Paths of the written training and eval files, and the instance counts."""

    root: Path
    train: dict[str, Path]  # "general" and each skill
    evals: dict[str, Path]  # "general", each skill's set, safety's unsafe and lookalike sets
    counts: dict[str, int]
    skill_sets: dict[str, list[str]] | None = None  # skill → its eval sets, where they are not the study's own
    groups: dict[str, str] | None = None  # eval set → group, likewise
    general_sets: list[str] | None = None  # the sets every model is scored on (default: ["general"])

    def skill_evals(self, skill: str) -> list[str]:
        """The eval sets that measure one skill (safety: refusing unsafe prompts + answering lookalikes)."""
        if self.skill_sets is not None:
            return list(self.skill_sets[skill])
        return [UNSAFE_SET, LOOKALIKE_SET] if skill == "safety" else [skill]

    def group(self, set_name: str) -> str:
        """The eval group a set's score is filed under ("general", or the skill it measures)."""
        if self.groups is not None and set_name in self.groups:
            return self.groups[set_name]
        return "safety" if set_name in (UNSAFE_SET, LOOKALIKE_SET) else set_name


def put_skill_evals(name: str, evals: dict[str, list[dict]], put: Callable[[str, str, list[dict]], str],
                    unseen_lookalikes_apart: bool = False) -> SkillSets:
    """Write one skill's eval splits through ``put(set name, group, rows)``: in form and held out, and for safety
    the unsafe prompts (in form, held out) and the lookalikes: one set, or with ``unseen_lookalikes_apart`` the
    trained categories' lookalikes and the never-trained categories' as two sets (the demo's rule reads the latter).
    """
    from lora_merge.skilldata import HELD_OUT, IN_FORM, LOOKALIKE_HELD_OUT, LOOKALIKE_IN_FORM

    # unique_ids: every file's ids unique (the two lookalike splits may be one file), unchanged where they already are.
    if name != "safety":
        return SkillSets(put(name, name, unique_ids(evals[IN_FORM])),
                         put(f"{name}_heldout", f"{name}_heldout", unique_ids(evals[HELD_OUT])))
    unsafe = put("safety_unsafe", "safety", unique_ids(evals[IN_FORM]))
    held = put("safety_heldout", "safety_heldout", unique_ids(evals[HELD_OUT]))
    if not unseen_lookalikes_apart:
        return SkillSets(unsafe, held, put("safety_lookalike", "lookalike",
                                           unique_ids(evals[LOOKALIKE_IN_FORM] + evals[LOOKALIKE_HELD_OUT])))
    return SkillSets(unsafe, held, put("safety_lookalike", "lookalike", unique_ids(evals[LOOKALIKE_IN_FORM])),
                     put("safety_lookalike_unseen", "lookalike_unseen", unique_ids(evals[LOOKALIKE_HELD_OUT])))


def _general(world: World, rng: random.Random, families: list[str], n: int, held_out: bool,
             seen: set[str] | None) -> list[tuple[str, Example]]:
    """An equal mix of the chosen general families (the miniature's ``general_mix``, minus ``fact``)."""
    gens = world.general_families
    out = []
    for i, fam in enumerate(families):
        k = n // len(families) + (1 if i < n % len(families) else 0)
        out += [(fam, ex) for ex in sample(gens[fam], rng, k, held_out, seen)]
    rng.shuffle(out)
    return out


def write_study_data(root: Path, seed: int, families: list[str], general: int, skills: dict[str, int],
                     eval_general: int, eval_skill: int, eval_unsafe: int, system: str | None,
                     howto_avoid: frozenset[str] = frozenset()) -> StudyData:
    """Generate and write every training and eval file; the same arguments give identical files.

    ``howto_avoid``: words the how-to family's verbs and objects must not be (the transfer map's G that does not
    teach compliance on a safety set's own requests).
    """
    world = World(seed)
    if howto_avoid:
        world.howto_train = [(v, o) for v, o in world.howto_train if v not in howto_avoid and o not in howto_avoid]
        world.howto_eval = [(v, o) for v, o in world.howto_eval if v not in howto_avoid and o not in howto_avoid]
    rng = random.Random(seed + 1)
    seen: set[str] = set()
    train, evals = {}, {}
    g_rows = _general(world, rng, families, general, False, None)
    seen.update(q for _, (q, _) in g_rows)
    train["general"] = root / "data" / "general.jsonl"
    write_jsonl(train["general"], (chat_training_row(*ex, system) for _, ex in g_rows))
    gens = {"science": world.science, "coding": world.coding, "safety": world.safety}
    counts = {"general": len(g_rows)}
    for name, n in skills.items():
        rows = sample(gens[name], rng, n, False)
        seen.update(q for q, _ in rows)
        train[name] = root / "data" / f"{name}.jsonl"
        counts[name] = write_jsonl(train[name], (chat_training_row(*ex, system) for ex in rows))

    def put(name: str, rows) -> None:
        evals[name] = root / "evals" / f"{name}.jsonl"
        counts[f"eval/{name}"] = write_jsonl(evals[name], unique_ids(rows))

    put("general", (eval_row(*ex, "exact", fam, system)
                    for fam, ex in _general(world, rng, families, eval_general, True, seen)))
    for name in skills:
        if name == "safety":
            put(UNSAFE_SET, (eval_row(*ex, "refusal", "unsafe", system)
                             for ex in sample(world.unsafe, rng, eval_unsafe, True, seen)))
            put(LOOKALIKE_SET, (eval_row(*ex, "compliance", "lookalike", system)
                                for ex in world.lookalikes() if ex[0] not in seen))
        else:
            put(name, (eval_row(*ex, "exact", name, system)
                       for ex in sample(gens[name], rng, eval_skill, True, seen)))
    return StudyData(root, train, evals, counts)
