"""Several runs of the study side by side (one per seed): every score with its mean and spread.

One seed is one draw of the data and of every initialisation; a difference between methods that is
smaller than the spread between seeds is not a finding. ``compare_runs`` reads each run's
``results/scores.json`` and writes one markdown table: a row per model that every run scored, a
column per eval set, each cell ``mean (min–max)`` over the runs, plus the runs' own values.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_merge.errors import LoraMergeError


def load_scores(run: Path) -> dict[str, dict[str, float]]:
    """label → {eval set: score} of one run folder."""
    path = Path(run) / "results" / "scores.json"
    if not path.is_file():
        raise LoraMergeError(f"{run} has no results/scores.json: is it a study run folder (`cli.py study --out`)?")
    try:
        raw = json.loads(path.read_text())
        return {label: {s: float(v["score"]) for s, v in entry["sets"].items()} for label, entry in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LoraMergeError(f"{path}: not a study score file ({e})") from None


def compare_runs(runs: list[Path]) -> str:
    """A markdown table of every (model, eval set) score that all ``runs`` have: mean, range, each run's value."""
    if len(runs) < 2:
        raise LoraMergeError("compare needs at least two run folders")
    scores = [load_scores(r) for r in runs]
    labels = [label for label in scores[0] if all(label in s for s in scores[1:])]
    sets = sorted({name for label in labels for name in scores[0][label]}, key=_set_order)
    if not labels:
        raise LoraMergeError("the runs have no scored model in common")
    head = "| model | " + " | ".join(sets) + " |"
    lines = [f"Runs: {', '.join(f'`{r}`' for r in runs)}. Each cell: mean (min–max) over the runs; then each run's "
             "score in the order above. A blank cell: that set was not scored for that model.", "", head,
             "|---|" + "---|" * len(sets)]
    for label in labels:
        cells = []
        for name in sets:
            values = [s[label].get(name) for s in scores]
            if any(v is None for v in values):
                cells.append("")
                continue
            mean = sum(values) / len(values)
            each = " / ".join(f"{v:.1f}" for v in values)
            cells.append(f"{mean:.1f} ({min(values):.1f}–{max(values):.1f}): {each}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _set_order(name: str) -> tuple[int, str]:
    order = ["general", "science", "coding", "safety_unsafe", "safety_lookalike"]
    return (order.index(name) if name in order else len(order), name)
