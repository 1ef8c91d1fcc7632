"""Write a skill's rows as JSONL files plus ``report.json``, all at once or not at all."""

from __future__ import annotations

import json
from pathlib import Path

from lora_merge.core.output import write_files
from lora_merge.core.output_kinds import SKILL_DATA
from lora_merge.skilldata.model import SkillData

REPORT = "report.json"


def split_file(split: str) -> str:
    return f"eval_{split}.jsonl"


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def publish(out: Path, files: dict[str, str], force: bool) -> None:
    """Staged by the project's output helper: complete or absent, never half-written; ``force`` replaces only an
    earlier skill data folder (or an empty one)."""
    write_files(out, files, force, kind=SKILL_DATA, origin="--out")


def write_skill(data: SkillData, out: str | Path, force: bool = False) -> dict[str, str]:
    """``train.jsonl``, ``eval_<split>.jsonl`` for every split and ``report.json`` in ``out``; returns file → split."""
    out = Path(out)
    files = {"train.jsonl": _jsonl(data.train)}
    names = {"train.jsonl": "train"}
    for split, rows in data.evals.items():
        files[split_file(split)] = _jsonl(rows)
        names[split_file(split)] = split
    report = {**data.report, "files": names}
    files[REPORT] = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    publish(out, files, force)
    return names
