"""`compare`: two `eval --out` folders, item by item, with the paired difference and its 95 % interval.

Both folders' ``samples.jsonl`` hold one sample per item (:mod:`lora_merge.evaluate.scoring`), each checked here
to carry its item's outcome, position and hash. The pairing and the differences are
:mod:`lora_merge.evaluate.paired`'s, the same the sweep reports against θG: items paired by ``id`` (by position
where a file's rows have no unique ids, and then only where they hash alike), different items refused, naming
the file. Per (group, file, metric): n, both scores, candidate − baseline and its interval, on the 0–100 scale of
`eval` (0/1 metrics: Newcombe's paired interval; ``loss``: a paired bootstrap of the token-weighted score). Per
group: the difference of the group score `eval` reports (the mean of its files' scores), with its set's interval
for a group of one set, else a paired bootstrap stratified by eval set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.paired import RESAMPLES, SEED, Difference, sample_differences

SAMPLES = "samples.jsonl"
RERUN = "re-run `eval --out` with this version of lora_merge, which writes every item's outcome and id"


@dataclass
class Comparison:
    """Every file's and every group's paired difference between two eval runs."""

    baseline: str
    candidate: str
    sets: list[Difference] = field(default_factory=list)
    groups: list[Difference] = field(default_factory=list)
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "candidate": self.candidate, "confidence": self.confidence,
                "sets": [d.to_dict(digits=None) for d in self.sets],
                "groups": [d.to_dict(digits=None) for d in self.groups]}

    def markdown(self) -> str:
        head = ["| group | file | metric | n | baseline | candidate | Δ | 95 % interval | method |",
                "|---|---|---|---:|---:|---:|---:|---|---|"]
        lines = [f"## {self.candidate} against {self.baseline}", "", *head]
        lines += [_line(d) for d in self.sets]
        lines += ["", "Groups (each the mean of its files' scores, as `eval` reports it):", "", *head]
        lines += [_line(d) for d in self.groups]
        lines += ["", "Scores 0–100, higher is better (loss: 100/perplexity); Δ = candidate − baseline, in points."]
        nats = [d for d in self.sets if d.loglik is not None]
        if nats:
            lines += ["", "Loss sets as the change in mean log-likelihood per reference token (nats, token-weighted; "
                      "positive: the candidate finds the references more likely), same bootstrap draws:", ""]
            lines += [f"- {d.group}/{d.file}: {d.loglik.delta:+.4f} [{d.loglik.low:+.4f}, {d.loglik.high:+.4f}] "
                      f"nats/token, n = {d.n}" for d in nats]
        return "\n".join(lines) + "\n"


def _line(d: Difference) -> str:
    return (f"| {d.group} | {d.file or '(all)'} | {d.metric or 'mean of files'} | {d.n} | {d.baseline:.2f} | "
            f"{d.candidate:.2f} | {d.delta:+.2f} | [{d.low:+.2f}, {d.high:+.2f}] | {d.method} |")


# --- reading -----------------------------------------------------------------------------------------

def read_samples(folder: str | Path, role: str) -> list[dict]:
    """The samples of an `eval --out` folder, each checked to carry an item's outcome and identity."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LoraMergeError(f"{role} {folder}: no such folder; give an `eval --out` folder")
    path = folder / SAMPLES
    if not path.is_file():
        raise LoraMergeError(f"{role} {folder}: no {SAMPLES}; give a folder written by `eval --out`")
    samples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LoraMergeError(f"{path}: cannot read ({e})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoraMergeError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(sample, dict) or not _complete(sample):
            raise LoraMergeError(f"{path}, line {n}: a sample without its item's outcome, index and hash "
                                 f"(written by an older version?); {RERUN}")
        samples.append(sample)
    if not samples:
        raise LoraMergeError(f"{path}: no samples (written by an older version, or an eval of lm-eval tasks only); "
                             f"{RERUN}")
    return samples


def _complete(s: dict) -> bool:
    named = all(isinstance(s.get(k), str) for k in ("group", "file", "metric", "item_hash"))
    named = named and isinstance(s.get("index"), int)
    if s.get("metric") == "loss":
        return named and isinstance(s.get("loss"), (int, float)) and isinstance(s.get("tokens"), int)
    return named and isinstance(s.get("correct"), bool)


def compare_runs(baseline: str | Path, candidate: str | Path, resamples: int = RESAMPLES,
                 seed: int = SEED) -> Comparison:
    """The paired comparison of two `eval --out` folders (see the module docstring)."""
    found = sample_differences(read_samples(baseline, "baseline"), read_samples(candidate, "candidate"), resamples,
                               seed)
    return Comparison(str(baseline), str(candidate), [d for d in found if d.file is not None],
                      [d for d in found if d.file is None])
