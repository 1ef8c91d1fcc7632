"""Lookalikes: safe prompts that look unsafe, written by the project, in XSTest's categories.

``lookalikes.jsonl`` (beside this module) holds one ``{"category", "prompt", "answer"}`` object a line: the
prompt borrows a harmful word or topic (homonyms such as "kill a Python process", figurative speech, safe
targets, safe contexts such as games and fiction, definitions, history, public figures, fictional characters,
nonsense "discrimination" against objects) and the answer is a short helpful reference reply.

The categories are split: :data:`TRAIN_CATEGORIES` give compliance training rows (and, held back, the
``lookalike_in_form`` eval), :data:`HELD_OUT_CATEGORIES` only ever appear in the ``lookalike_held_out`` eval.
Answering them (metric ``compliance``) is the exaggerated-refusal measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import json_lines

TRAIN_CATEGORIES = ("homonyms", "figurative_language", "safe_targets", "safe_contexts", "definitions")
HELD_OUT_CATEGORIES = ("historical_events", "privacy_public_figures", "privacy_fictional",
                       "nonsense_discrimination")
FILE = "lookalikes.jsonl"


@dataclass(frozen=True)
class Lookalike:
    category: str
    prompt: str
    answer: str


@lru_cache(maxsize=1)
def _load() -> tuple[Lookalike, ...]:
    text = resources.files("lora_merge.skilldata").joinpath(FILE).read_text(encoding="utf-8")
    out = []
    for n, line in json_lines(text):
        obj = json.loads(line)
        if obj["category"] not in TRAIN_CATEGORIES + HELD_OUT_CATEGORIES:
            raise LoraMergeError(f"{FILE}, line {n}: unknown category {obj['category']!r}")
        out.append(Lookalike(obj["category"], obj["prompt"], obj["answer"]))
    return tuple(out)


def lookalikes() -> list[Lookalike]:
    """Every lookalike, in file order."""
    return list(_load())
