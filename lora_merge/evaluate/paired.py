"""Two models on the same items: the pairing, and each eval set's and group's difference with its 95 % interval.

The one definition of a paired difference. `compare` (two `eval --out` folders,
:mod:`lora_merge.evaluate.compare`) and the sweep (each ω point against θG,
:mod:`lora_merge.evaluate.sweep_results`) both report what this module computes from the two sides' samples
(:mod:`lora_merge.evaluate.scoring` writes one per item), so the same two runs give the same numbers in both.

Pairing, per eval file (group and file name):

- by ``id``, when every item of the file carries one and no id repeats, on both sides; the sides must hold the
  same ids;
- otherwise by position (``index``, the item's 0-based row in the file); the sides must hold the same rows.

Paired items must hash alike (``item_hash``: what the row asks and expects, its metric included) and have the
same metric. `eval` writes the hash, so two `eval --out` folders are always checked item by item. Samples with
no hash on either side (a sweep's test scorers write none) pair by position alone: sound only for scorings of
the same eval files within one run, as a sweep's points are. Anything else is a :class:`LoraMergeError` naming
the file and what differs.

Differences, candidate − baseline on the 0–100 scale of :mod:`lora_merge.evaluate.report`:

- an eval set (one metric of one file): 0/1 outcomes, Newcombe's paired interval
  (:func:`~lora_merge.evaluate.intervals.paired_proportion_interval`); ``loss``, the paired bootstrap of the
  token-weighted score (:func:`~lora_merge.evaluate.intervals.paired_loss_score_interval`).
- a group: its score is the one `eval` and the sweep report, the mean of its files' scores, each the mean of its
  metrics' scores; so a group's Δ is always the Δ of the two reported group scores. A group of one set has that
  set's interval. A group of several has a stratified paired bootstrap: each resample draws every set's items
  with replacement within that set, in pairs (every set keeps its size and its weight in the mean), and scores
  the group on both sides; the percentile interval of the differences. The sets are drawn in the order of their
  (file, metric) names from one ``Generator(PCG64(seed))`` stream
  (:func:`~lora_merge.evaluate.intervals.stratified_resampled_sums`), so the order the samples come in changes
  nothing; the resamples and the seed are in ``method``. A group's ``n`` is its items, ``metric`` None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.intervals import (
    Interval,
    bootstrap_method,
    loss_scores,
    paired_loglik_interval,
    paired_loss_score_interval,
    paired_proportion_interval,
    percentile_bounds,
    stratified_resampled_sums,
)

if TYPE_CHECKING:
    from lora_merge.evaluate.report import EvalReport

RESAMPLES = 2000
SEED = 0
SIDES = ("the baseline", "the candidate")


@dataclass(frozen=True)
class Difference:
    """candidate − baseline on one eval set (``file`` and ``metric`` given) or one group (both None)."""

    group: str
    file: str | None
    metric: str | None
    baseline: float
    candidate: float
    interval: Interval
    loglik: Interval | None = None  # ``loss`` sets: the change in mean log-likelihood per token, in nats

    @property
    def n(self) -> int:
        return self.interval.n

    @property
    def delta(self) -> float:
        return self.interval.delta

    @property
    def low(self) -> float:
        return self.interval.low

    @property
    def high(self) -> float:
        return self.interval.high

    @property
    def method(self) -> str:
        return self.interval.method

    def to_dict(self, digits: int | None = 4) -> dict:
        """{group, file, metric, n, baseline, candidate, delta, low, high, method}; numbers rounded to ``digits``."""
        r = (lambda v: v) if digits is None else (lambda v: round(v, digits))
        out = {"group": self.group, "file": self.file, "metric": self.metric, "n": self.n,
               "baseline": r(self.baseline), "candidate": r(self.candidate), "delta": r(self.delta),
               "low": r(self.low), "high": r(self.high), "method": self.method}
        if self.loglik is not None:
            out["loglik_nats"] = {"delta": r(self.loglik.delta), "low": r(self.loglik.low), "high": r(self.loglik.high)}
        return out


@dataclass(frozen=True)
class PairedSet:
    """One eval set's paired outcomes: 0/1 (no tokens), or each item's loss (nats) and token count, per side."""

    group: str
    file: str
    metric: str
    baseline: np.ndarray
    candidate: np.ndarray
    baseline_tokens: np.ndarray | None = None
    candidate_tokens: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.baseline)

    def columns(self) -> np.ndarray:
        """n × k per-item values whose sums give both scores (0/1: the outcomes; loss: loss·tokens and tokens)."""
        if self.baseline_tokens is None:
            return np.stack([self.baseline, self.candidate], axis=1)
        return np.stack([self.baseline * self.baseline_tokens, self.baseline_tokens,
                         self.candidate * self.candidate_tokens, self.candidate_tokens], axis=1)

    def scores(self, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(baseline, candidate) scores, 0–100, from sums of :meth:`columns` (the last axis)."""
        if self.baseline_tokens is None:
            return 100.0 * sums[..., 0] / self.n, 100.0 * sums[..., 1] / self.n
        return loss_scores(sums[..., 0], sums[..., 1]), loss_scores(sums[..., 2], sums[..., 3])

    def interval(self, resamples: int, seed: int, confidence: float) -> Interval:
        if self.baseline_tokens is None:
            return paired_proportion_interval(self.baseline.astype(bool).tolist(),
                                              self.candidate.astype(bool).tolist(), confidence)
        return paired_loss_score_interval(self.baseline, self.baseline_tokens, self.candidate, self.candidate_tokens,
                                          resamples, seed, confidence)

    def loglik_interval(self, resamples: int, seed: int, confidence: float) -> Interval | None:
        """``loss`` sets: the change in mean log-likelihood per token (nats, token-weighted); None for 0/1 sets."""
        if self.baseline_tokens is None:
            return None
        return paired_loglik_interval(self.baseline, self.baseline_tokens, self.candidate, self.candidate_tokens,
                                      resamples, seed, confidence)


# --- pairing -----------------------------------------------------------------------------------------

def _few(values) -> str:
    values = sorted(values, key=str)
    return ", ".join(map(str, values[:5])) + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def _ids(items: Sequence[dict]) -> list[str] | None:
    """The items' ids when every item has one and none repeats (then they pair items), else None."""
    ids = [s.get("id") for s in items]
    if any(i is None for i in ids) or len(set(map(str, ids))) != len(ids):
        return None
    return [str(i) for i in ids]


def _same_item(b: dict, c: dict) -> bool:
    """Alike: the same hash, or (within one run's scorings) none on either side; and the same metric."""
    return b.get("item_hash") == c.get("item_hash") and b.get("metric") == c.get("metric")


def pair_items(where: str, base: Sequence[dict], cand: Sequence[dict],
               sides: tuple[str, str] = SIDES) -> list[tuple[dict, dict]]:
    """The items of one eval file paired across the two sides (see the module docstring); ``where`` names the
    file in errors, ``sides`` the two sides. Items are taken in file order (``index``)."""
    base = sorted(base, key=lambda s: s.get("index", 0))
    cand = sorted(cand, key=lambda s: s.get("index", 0))
    b_name, c_name = sides
    base_ids, cand_ids = _ids(base), _ids(cand)
    if base_ids is not None and cand_ids is not None:
        only_base, only_cand = set(base_ids) - set(cand_ids), set(cand_ids) - set(base_ids)
        if only_base or only_cand:
            raise LoraMergeError(
                f"{where}: the runs scored different items ({len(base)} in {b_name}, {len(cand)} in {c_name}); "
                f"ids only in {b_name}: {_few(only_base) or 'none'}; only in {c_name}: {_few(only_cand) or 'none'}")
        by_id = dict(zip(cand_ids, cand, strict=True))
        pairs = [(b, by_id[i]) for i, b in zip(base_ids, base, strict=True)]
        changed = [b.get("id") for b, c in pairs if not _same_item(b, c)]
        if changed:
            raise LoraMergeError(f"{where}: items with the same id ask or expect different things in the two runs "
                                 f"(ids {_few(changed)}); the eval set changed between them")
        return pairs
    if [s.get("index") for s in base] != [s.get("index") for s in cand]:
        raise LoraMergeError(f"{where}: the runs scored different items ({len(base)} rows in {b_name}, "
                             f"{len(cand)} in {c_name}; was --limit different?), and the rows have no unique ids "
                             "to pair them by")
    differ = [b.get("index") for b, c in zip(base, cand, strict=True) if not _same_item(b, c)]
    if differ:
        raise LoraMergeError(f"{where}: rows without unique ids are paired by position only when their prompts and "
                             f"references agree, and rows {_few(differ)} (0-based) differ between {b_name} and "
                             f"{c_name}: not the same items, so not a paired comparison")
    return list(zip(base, cand, strict=True))


def _by_file(samples: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for s in samples:
        out.setdefault((s["group"], s["file"]), []).append(s)
    return out


def _paired_set(group: str, file: str, metric: str, pairs: Sequence[tuple[dict, dict]]) -> PairedSet:
    if metric == "loss":
        loss = [np.array([side[k]["loss"] for side in pairs], float) for k in (0, 1)]
        tokens = [np.array([side[k]["tokens"] for side in pairs], float) for k in (0, 1)]
        return PairedSet(group, file, metric, loss[0], loss[1], tokens[0], tokens[1])
    correct = [np.array([bool(side[k]["correct"]) for side in pairs], float) for k in (0, 1)]
    return PairedSet(group, file, metric, correct[0], correct[1])


def pair_sets(baseline: Sequence[dict], candidate: Sequence[dict], sides: tuple[str, str] = SIDES) -> list[PairedSet]:
    """Both sides' samples paired item by item, per eval set: each group's files in the order they first appear
    in the baseline's samples, each file's metrics in file order, ``loss`` last. Every sample needs its group,
    file and metric, and its outcome: ``correct``, or for ``loss`` its ``loss`` and ``tokens``."""
    base_files, cand_files = _by_file(baseline), _by_file(candidate)
    if set(base_files) != set(cand_files):
        only_b = [f"{g}/{f}" for g, f in set(base_files) - set(cand_files)]
        only_c = [f"{g}/{f}" for g, f in set(cand_files) - set(base_files)]
        raise LoraMergeError(f"the runs scored different eval files: only in {sides[0]}: {_few(only_b) or 'none'}; "
                             f"only in {sides[1]}: {_few(only_c) or 'none'}")
    groups = list(dict.fromkeys(g for g, _ in base_files))
    sets = []
    for (group, file) in sorted(base_files, key=lambda k: groups.index(k[0])):
        by_metric: dict[str, list[tuple[dict, dict]]] = {}
        for b, c in pair_items(f"{group}/{file}", base_files[(group, file)], cand_files[(group, file)], sides):
            by_metric.setdefault(b["metric"], []).append((b, c))
        for metric in sorted(by_metric, key=lambda m: m == "loss"):
            sets.append(_paired_set(group, file, metric, by_metric[metric]))
    return sets


# --- differences -------------------------------------------------------------------------------------

def _group_scores(members: Sequence[PairedSet], sums: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(baseline, candidate) group scores from each member's column sums: the mean over files of the mean over
    their metrics, as :meth:`lora_merge.evaluate.report.EvalReport.group_scores` computes it."""
    files: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for s, total in zip(members, sums, strict=True):
        files.setdefault(s.file, []).append(s.scores(total))
    return tuple(np.mean([np.mean([pair[k] for pair in v], axis=0) for v in files.values()], axis=0)
                 for k in (0, 1))


def _group_difference(group: str, members: Sequence[PairedSet], resamples: int, seed: int,
                      confidence: float) -> Difference:
    """A group of several sets: its score's difference with the stratified paired bootstrap's interval."""
    members = sorted(members, key=lambda s: (s.file, s.metric))
    columns = [s.columns() for s in members]
    base, cand = _group_scores(members, [c.sum(axis=0) for c in columns])
    resampled = _group_scores(members, stratified_resampled_sums(columns, resamples, seed))
    low, high = percentile_bounds(resampled[1] - resampled[0], confidence)
    interval = Interval(float(cand - base), low, high, sum(s.n for s in members),
                        f"{bootstrap_method(resamples, seed)} stratified by eval set")
    return Difference(group, None, None, float(base), float(cand), interval)


def differences(sets: Sequence[PairedSet], resamples: int = RESAMPLES, seed: int = SEED,
                confidence: float = 0.95) -> list[Difference]:
    """Each set's difference in the order given, then each group's, in the order the groups first appear."""
    out = []
    for s in sets:
        base, cand = s.scores(s.columns().sum(axis=0))
        out.append(Difference(s.group, s.file, s.metric, float(base), float(cand),
                              s.interval(resamples, seed, confidence), s.loglik_interval(resamples, seed, confidence)))
    for group in dict.fromkeys(s.group for s in sets):
        members = [s for s in sets if s.group == group]
        if len(members) == 1:
            one = next(d for d in out if d.group == group)
            out.append(Difference(group, None, None, one.baseline, one.candidate, one.interval, one.loglik))
        else:
            out.append(_group_difference(group, members, resamples, seed, confidence))
    return out


def sample_differences(baseline: Sequence[dict], candidate: Sequence[dict], resamples: int = RESAMPLES,
                       seed: int = SEED, confidence: float = 0.95, sides: tuple[str, str] = SIDES) -> list[Difference]:
    """Two sides' samples paired (:func:`pair_sets`) and their differences (:func:`differences`)."""
    return differences(pair_sets(baseline, candidate, sides), resamples, seed, confidence)


def _has_outcome(s: dict) -> bool:
    if s.get("metric") == "loss":
        return isinstance(s.get("loss"), (int, float)) and isinstance(s.get("tokens"), (int, float))
    return "correct" in s


def paired_differences(baseline: EvalReport, candidate: EvalReport, resamples: int = RESAMPLES, seed: int = SEED,
                       confidence: float = 0.95) -> list[Difference] | None:
    """Two reports' differences (the sweep's): sets in the baseline report's order, then groups.

    None when either report lacks the per-item outcome of some item it scored (a scorer that keeps no samples).
    """
    keys = [(s.group, s.file, s.metric) for s in baseline.scores]
    if sorted(keys) != sorted((s.group, s.file, s.metric) for s in candidate.scores):
        raise LoraMergeError(f"{baseline.model} and {candidate.model} were scored on different eval sets")
    chosen, scored = [], set(keys)
    for report in (baseline, candidate):
        items = [s for s in report.samples if (s.get("group"), s.get("file"), s.get("metric")) in scored]
        counts: dict[tuple, int] = {}
        for s in items:
            key = (s["group"], s["file"], s["metric"])
            counts[key] = counts.get(key, 0) + 1
        if any(counts.get((m.group, m.file, m.metric)) != m.n for m in report.scores) or \
                not all(_has_outcome(s) for s in items):
            return None
        chosen.append(items)
    out = sample_differences(*chosen, resamples, seed, confidence, sides=(baseline.model, candidate.model))
    order, groups = {k: i for i, k in enumerate(keys)}, list(dict.fromkeys(k[0] for k in keys))
    return (sorted((d for d in out if d.file is not None), key=lambda d: order[(d.group, d.file, d.metric)])
            + sorted((d for d in out if d.file is None), key=lambda d: groups.index(d.group)))
