"""Eval results as values, and as tables people paste: markdown, JSON, CSV.

Every score is on a 0–100 scale where higher is better: accuracy in percent for ``exact``, ``contains``,
``choice``, ``refusal`` and ``compliance``; for ``loss`` it is 100 / perplexity (the geometric-mean
probability the model gives the reference tokens, in percent), with the mean token loss and perplexity
reported beside it. A file's score is the mean of its metrics' scores, a group's the mean of its files'.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lora_merge.core.output import write_files
from lora_merge.core.output_kinds import EVAL_REPORT

TABLE_FILES = ("scores.md", "scores.json", "scores.csv", "samples.jsonl")


@dataclass
class MetricScore:
    """One metric over the rows of one file."""

    group: str
    file: str
    metric: str
    n: int
    score: float  # 0–100, higher is better
    loss: float | None = None  # loss metric: mean token loss (nats)
    perplexity: float | None = None
    tokens: int | None = None


@dataclass
class EvalReport:
    """Scores per metric, file and group, plus every generated sample (for inspection)."""

    model: str
    scores: list[MetricScore] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def file_scores(self) -> dict[tuple[str, str], float]:
        """(group, file) → mean of that file's metric scores."""
        acc: dict[tuple[str, str], list[float]] = {}
        for s in self.scores:
            acc.setdefault((s.group, s.file), []).append(s.score)
        return {k: sum(v) / len(v) for k, v in acc.items()}

    def group_scores(self) -> dict[str, float]:
        """group → mean of its files' scores (each file counts once, like a benchmark average)."""
        acc: dict[str, list[float]] = {}
        for (group, _), v in self.file_scores().items():
            acc.setdefault(group, []).append(v)
        return {g: sum(v) / len(v) for g, v in acc.items()}

    def group_score(self, group: str) -> float:
        scores = self.group_scores()
        if group not in scores:
            from lora_merge.core.errors import LoraMergeError

            raise LoraMergeError(f"no eval group {group!r} in the report; groups: {', '.join(scores) or 'none'}")
        return scores[group]

    # --- tables ------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "scale": "0-100, higher is better (loss: 100/perplexity)",
            "groups": {g: round(v, 4) for g, v in self.group_scores().items()},
            "files": [{"group": g, "file": f, "score": round(v, 4)} for (g, f), v in self.file_scores().items()],
            "metrics": [asdict(s) for s in self.scores],
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
        }

    def markdown(self) -> str:
        lines = [f"## {self.model}", "", "| group | file | metric | n | score | loss | perplexity |",
                 "|---|---|---|---:|---:|---:|---:|"]
        for s in self.scores:
            lines.append(f"| {s.group} | {s.file} | {s.metric} | {s.n} | {s.score:.2f} | {_fmt(s.loss)} | "
                         f"{_fmt(s.perplexity)} |")
        lines += ["", "| group | score |", "|---|---:|"]
        lines += [f"| {g} | {v:.2f} |" for g, v in self.group_scores().items()]
        lines += ["", "Scores are 0–100, higher is better (loss rows: 100/perplexity)."]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["model", "group", "file", "metric", "n", "score", "loss", "perplexity", "tokens"])
        for s in self.scores:
            w.writerow([self.model, s.group, s.file, s.metric, s.n, f"{s.score:.4f}", _fmt(s.loss, 6),
                        _fmt(s.perplexity, 6), s.tokens if s.tokens is not None else ""])
        return buf.getvalue()

    def write(self, out: Path, force: bool = False, inputs: Sequence[Path | None] = ()) -> Path:
        """Write scores.{md,json,csv} and samples.jsonl into ``out`` atomically (temp folder, then rename); ``force``
        replaces only an earlier eval report (or an empty folder), never one of ``inputs``."""
        out = Path(out)
        files = {
            "scores.md": self.markdown(),
            "scores.json": json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n",
            "scores.csv": self.csv(),
            "samples.jsonl": "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in self.samples),
        }
        write_files(out, files, force, inputs, kind=EVAL_REPORT, origin="--out")
        return out


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return ""
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}"
