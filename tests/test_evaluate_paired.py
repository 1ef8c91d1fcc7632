"""Paired differences of two reports (lora_merge/evaluate/paired.py), on constructed items whose answer is known."""

from __future__ import annotations

import pytest

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.intervals import paired_proportion_interval
from lora_merge.evaluate.paired import paired_differences
from lora_merge.evaluate.report import EvalReport, MetricScore


def report(name, sets):
    """A report from {(group, file): [0/1 outcome per item]}, with its samples and scores as `eval` writes them."""
    samples = [{"group": g, "file": f, "metric": "exact", "index": i, "correct": bool(v)}
               for (g, f), outcomes in sets.items() for i, v in enumerate(outcomes)]
    scores = [MetricScore(g, f, "exact", len(v), 100 * sum(v) / len(v)) for (g, f), v in sets.items()]
    return EvalReport(name, scores, samples)


def test_a_group_is_the_mean_of_its_files_not_the_pooled_items():
    # file a: 2 items, both flipped to right (+100); file b: 8 items unchanged (0). The group's score is the mean of
    # its files' (+50); pooled items would say +20. Every resample flips all of a and none of b: interval [50, 50].
    base = report("θG", {("general", "a"): [0, 0], ("general", "b"): [1, 0, 1, 0, 1, 0, 1, 0]})
    cand = report("ω", {("general", "a"): [1, 1], ("general", "b"): [1, 0, 1, 0, 1, 0, 1, 0]})
    diffs = paired_differences(base, cand)
    group = next(d for d in diffs if d.file is None)
    assert (group.baseline, group.candidate) == pytest.approx((25.0, 75.0))
    assert (group.interval.delta, group.interval.low, group.interval.high, group.interval.n) == pytest.approx(
        (50.0, 50.0, 50.0, 10))
    assert group.interval.method == "paired-bootstrap(2000, seed 0) stratified by eval set"
    a = next(d for d in diffs if d.file == "a")
    oracle = paired_proportion_interval([False, False], [True, True])
    assert (a.interval.low, a.interval.high) == pytest.approx((oracle.low, oracle.high))


def test_a_group_of_one_set_has_that_sets_interval_and_missing_samples_give_none():
    base = report("θG", {("general", "g"): [1, 0, 1, 1, 0, 0]})
    cand = report("ω", {("general", "g"): [1, 1, 1, 0, 1, 0]})
    set_, group = paired_differences(base, cand)
    oracle = paired_proportion_interval([True, False, True, True, False, False], [True, True, True, False, True, False])
    assert set_.interval == group.interval == oracle and group.file is None
    assert paired_differences(base, EvalReport("ω", cand.scores)) is None  # a scorer that kept no samples


def test_different_items_or_sets_are_refused():
    base = report("θG", {("general", "g"): [1, 0]})
    other = report("ω", {("general", "g"): [1, 0]})
    base.samples[0]["item_hash"], other.samples[0]["item_hash"] = "aaaa", "bbbb"
    with pytest.raises(LoraMergeError, match="not the same items"):
        paired_differences(base, other)
    with pytest.raises(LoraMergeError, match="different eval sets"):
        paired_differences(base, report("ω", {("general", "h"): [1, 0]}))
