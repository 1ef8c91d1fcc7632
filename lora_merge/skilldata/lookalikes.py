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

from dataclasses import dataclass
from functools import lru_cache

from lora_merge.core.errors import LoraMergeError
from lora_merge.skilldata.shipped import shipped_rows

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
    rows = shipped_rows(FILE, ("category", "prompt", "answer"), Lookalike)
    for x in rows:
        if x.category not in TRAIN_CATEGORIES + HELD_OUT_CATEGORIES:
            raise LoraMergeError(f"{FILE}: unknown category {x.category!r} (prompt {x.prompt!r})")
    return rows


def lookalikes() -> list[Lookalike]:
    """Every lookalike, in file order."""
    return list(_load())
