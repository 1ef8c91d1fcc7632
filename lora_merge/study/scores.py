"""The study's score store: every (model, eval set) score on disk as soon as it is known.

A study is long, so it is resumable: a model/eval-set pair already in ``scores.json`` is not evaluated
again, and a killed run continues where it stopped. The scorer evaluates one eval set at a time with
that set's own generation length (a refusal shows in its first tokens; a copied word needs a few).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.core.output import replace_file
from lora_merge.evaluate.answered import JUDGED_METRICS, RULE_ID
from lora_merge.evaluate.report import EvalReport, MetricScore
from lora_merge.evaluate.scoring import evaluate_model

SAMPLES_PER_SET = 6  # outputs kept per model and eval set, to read what the scores mean


@dataclass
class EvalSet:
    name: str
    group: str  # "general" or the skill it measures
    path: Path
    max_new_tokens: int


@dataclass
class ScoreStore:
    """``scores.json``: label → {"meta": {...}, "sets": {set name: {"group", "metric", "n", "score", for 0/1
    metrics "ids" and "outcomes", and "samples": each item's sample as `eval` writes it (its reply, its ``loss``
    and ``tokens`` for a loss set), all in file order}}}."""

    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> "ScoreStore":
        data = json.loads(path.read_text()) if path.is_file() else {}
        return cls(path, data)

    def has(self, label: str, set_name: str) -> bool:
        """Scored already; a refusal or lookalike score only when today's rule of what counts judged it."""
        entry = self.data.get(label, {}).get("sets", {}).get(set_name)
        return entry is not None and (entry.get("metric") not in JUDGED_METRICS or entry.get("rule") == RULE_ID)

    def get(self, label: str, set_name: str) -> float | None:
        entry = self.data.get(label, {}).get("sets", {}).get(set_name)
        return None if entry is None else entry["score"]

    def outcomes(self, label: str, set_name: str) -> tuple[list, list[int]] | None:
        """(item ids, 0/1 outcomes) of a scored 0/1 set in file order, for paired intervals; None when not kept."""
        entry = self.data.get(label, {}).get("sets", {}).get(set_name)
        if entry is None or "outcomes" not in entry:
            return None
        return entry["ids"], entry["outcomes"]

    def put(self, label: str, set_name: str, entry: dict, meta: Mapping | None = None) -> None:
        row = self.data.setdefault(label, {"meta": {}, "sets": {}})
        row["sets"][set_name] = entry
        if meta:
            row["meta"].update(meta)
        self.save()

    def set_meta(self, label: str, meta: Mapping) -> None:
        self.data.setdefault(label, {"meta": {}, "sets": {}})["meta"].update(meta)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(self.path, json.dumps(self.data, indent=1, ensure_ascii=False))


def item_outcomes(samples: list[dict]) -> dict:
    """Every item's 0/1 outcome and id in file order (``ids``, ``outcomes``), kept so two models scored on the
    same set can be compared item by item; nothing for a set scored by loss."""
    items = sorted(samples, key=lambda s: s["index"])
    if not items or not all("correct" in s for s in items):
        return {}
    return {"ids": [s.get("id") for s in items], "outcomes": [int(bool(s["correct"])) for s in items]}


def score_model(model, tokenizer, label: str, sets: list[EvalSet], store: ScoreStore, batch_size: int,
                samples_path: Path | None = None, meta: Mapping | None = None, progress: bool = False) -> EvalReport:
    """Evaluate ``model`` on each set not yet stored under ``label``; return a report of all of them."""
    scores: list[MetricScore] = []
    for s in sets:
        if not store.has(label, s.name):
            rep = evaluate_model(model, {s.group: [s.path]}, tokenizer=tokenizer, batch_size=batch_size,
                                 max_new_tokens=s.max_new_tokens, name=label, progress=progress)
            (m,) = rep.scores  # one file, one metric per set
            entry = {"group": s.group, "metric": m.metric, "n": m.n, "score": m.score, "seconds": round(rep.seconds, 1),
                     **item_outcomes(rep.samples), "samples": sorted(rep.samples, key=lambda x: x["index"])}
            store.put(label, s.name, entry | ({"rule": RULE_ID} if m.metric in JUDGED_METRICS else {}), meta)
            if samples_path is not None:
                with open(samples_path, "a", encoding="utf-8") as f:
                    for smp in rep.samples[:SAMPLES_PER_SET]:
                        f.write(json.dumps({"model": label, "set": s.name, **smp}, ensure_ascii=False) + "\n")
        e = store.data[label]["sets"][s.name]
        scores.append(MetricScore(s.group, s.name, e["metric"], e["n"], e["score"]))
    return EvalReport(label, scores)


def sweep_scorer(store: ScoreStore, skill: str, sets: list[EvalSet], batch_size: int, samples_path: Path | None,
                 progress: bool = False):
    """A :func:`lora_merge.evaluate.sweep.run_sweep` scorer whose θG point is shared by every skill's sweep."""

    def scorer(model, tokenizer, point):
        label = "θG" if point.reference else f"PTM {skill} {point.label}"
        meta = {"kind": "θG" if point.reference else "ptm", "skill": skill, "omega": point.scale,
                "weights": point.weights, "heuristic": point.heuristic}
        if point.reference:
            meta = {"kind": "θG"}
        return score_model(model, tokenizer, label, sets, store, batch_size, samples_path, meta, progress)

    return scorer
