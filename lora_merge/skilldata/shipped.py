"""Files shipped beside the skill data layer's modules: where they lie, and their JSON-lines rows read once."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TypeVar

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import json_lines, json_value

T = TypeVar("T")


def shipped_path(name: str) -> Path:
    """Where a file shipped in ``lora_merge/skilldata`` lies (``data distill`` rewrites one of them)."""
    return Path(str(resources.files("lora_merge.skilldata").joinpath(name)))


def shipped_rows(name: str, fields: tuple[str, ...], make: Callable[..., T]) -> tuple[T, ...]:
    """Every row of a shipped JSON-lines file as ``make(*row[field] for field in fields)``, in file order; a row
    that is not an object or lacks a field is an error naming the file and the line."""
    text = shipped_path(name).read_text(encoding="utf-8")
    out = []
    for n, raw in json_lines(text):
        row = json_value(raw)
        if not isinstance(row, dict) or any(f not in row for f in fields):
            raise LoraMergeError(f"{name}, line {n}: needs {', '.join(fields)}")
        out.append(make(*(str(row[f]) for f in fields)))
    return tuple(out)
