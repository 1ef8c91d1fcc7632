"""Several runs of the study side by side (one per seed): every score with its mean and spread.

One seed is one draw of the data and of every initialisation; a difference between methods that is
smaller than the spread between seeds is not a finding. ``compare_runs`` reads each run's
``results/scores.json`` and writes one markdown table: a row per model that every run scored, a
column per eval set, each cell ``mean (min to max)`` over the runs, plus the runs' own values;
and the same as differences from each run's own θG.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_merge.core.errors import LoraMergeError


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


def compare_runs(runs: list[Path], reference: str = "θG") -> str:
    """Markdown tables of every (model, eval set) score that all ``runs`` have: mean, range, each run's value.

    When every run scored ``reference`` (θG), a second table gives each score minus that run's own
    reference score on the same set: seeds move θG too, and "general within 2 points of θG" is a
    within-run difference.
    """
    if len(runs) < 2:
        raise LoraMergeError("compare needs at least two run folders")
    scores = [load_scores(r) for r in runs]
    labels = [label for label in scores[0] if all(label in s for s in scores[1:])]
    if not labels:
        raise LoraMergeError("the runs have no scored model in common")
    sets = sorted({name for label in labels for name in scores[0][label]}, key=_set_order)
    intro = (f"Runs: {', '.join(f'`{r}`' for r in runs)}. Each cell: mean (min to max) over the runs, then each run's "
             "score in that order. A blank cell: that set was not scored for that model.")
    out = [intro, "", _table(labels, sets, lambda i, label, name: scores[i][label].get(name), len(runs))]
    if reference in labels:
        def delta(i: int, label: str, name: str) -> float | None:
            value, ref = scores[i][label].get(name), scores[i][reference].get(name)
            return None if value is None or ref is None else value - ref

        others = [label for label in labels if label != reference]
        out += ["", f"The same scores minus each run's own {reference} on that set (points):", "",
                _table(others, sets, delta, len(runs), signed=True)]
    return "\n".join(out)


def _table(labels: list[str], sets: list[str], value, n_runs: int, signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    lines = ["| model | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for label in labels:
        cells = []
        for name in sets:
            values = [value(i, label, name) for i in range(n_runs)]
            if any(v is None for v in values):
                cells.append("")
                continue
            each = " / ".join(fmt.format(v) for v in values)
            cells.append(f"{fmt.format(sum(values) / len(values))} ({fmt.format(min(values))} to "
                         f"{fmt.format(max(values))}): {each}")
        lines.append(f"| {_cell(label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (labels such as 'ω = |D|/|G|' hold pipes)."""
    return text.replace("|", "\\|")


def _set_order(name: str) -> tuple[int, str]:
    order = ["general", "science", "coding", "safety_unsafe", "safety_lookalike"]
    return (order.index(name) if name in order else len(order), name)
