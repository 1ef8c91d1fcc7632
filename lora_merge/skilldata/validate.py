"""Users' own JSONL through the same checks as the built-in skills: row format, then disjointness.

A file whose rows carry a ``metric`` is an eval set (validated by :func:`lora_merge.evaluate.sets.load_eval_file`);
any other file is training data (validated by :func:`lora_merge.train.data.load_data`). Against a training file, no
eval prompt may equal a training prompt after normalisation (lower case, punctuation stripped, whitespace
collapsed): such a set would measure memory, not the skill.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import InvalidJSON, json_value
from lora_merge.skilldata.splits import normalise_text, prompt_text

SHOWN = 3  # overlapping prompts quoted in an error


@dataclass
class Validation:
    """What a checked file holds: its kind (``train`` or ``eval``), rows, metrics and overlap with training."""

    path: Path
    kind: str
    rows: int
    metrics: dict[str, int] = field(default_factory=dict)
    against: Path | None = None
    overlap: int = 0


def _first_row(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json_value(line)
                    return row if isinstance(row, dict) else None
    except (OSError, UnicodeDecodeError, InvalidJSON):
        return None  # the full loader names the problem and the row
    return None


def _eval_prompts(path: Path) -> tuple[list[str], dict[str, int]]:
    from lora_merge.evaluate.sets import load_eval_file

    ef = load_eval_file(path)
    prompts = []
    for r in ef.rows:
        raw = {"messages": list(r.messages)} if r.messages else {"prompt": r.prompt or r.text or ""}
        prompts.append(prompt_text(raw))
    return prompts, dict(Counter(r.metric for r in ef.rows))


def _train_prompts(path: Path) -> list[str]:
    from lora_merge.train.data import load_data

    return [prompt_text(r) for r in load_data(path, "training").rows]


def validate_file(path: str | Path, against: str | Path | None = None) -> Validation:
    """Validate a user's JSONL (training or eval rows); with ``against``, refuse eval prompts seen in training."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise LoraMergeError(f"{path}: give a .jsonl file (one JSON object a line)")
    if not path.is_file():
        raise LoraMergeError(f"{path}: no such file")
    first = _first_row(path)
    if first is not None and "metric" in first:
        prompts, metrics = _eval_prompts(path)
        result = Validation(path, "eval", len(prompts), metrics)
    else:
        prompts = _train_prompts(path)
        result = Validation(path, "train", len(prompts))
    if against is not None:
        against = Path(against)
        seen = {normalise_text(p) for p in _train_prompts(against)}
        dup = [p for p in prompts if normalise_text(p) in seen]
        result.against, result.overlap = against, len(dup)
        if dup:
            shown = "; ".join(repr(p[:80]) for p in dup[:SHOWN])
            raise LoraMergeError(f"{path}: {len(dup)} of {len(prompts)} prompts are also in {against} (same text "
                                 f"after normalising), e.g. {shown}; remove them so the set measures the skill, "
                                 "not memory")
    return result
