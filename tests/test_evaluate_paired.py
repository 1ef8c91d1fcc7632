"""Paired differences of two reports (lora_merge/evaluate/paired.py), on constructed items whose answer is known."""

from __future__ import annotations

import math

import numpy as np
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


def test_a_group_of_several_sets_is_a_bootstrap_stratified_by_set_of_the_reported_group_score():
    # Oracle, written from the module's docstring: file Z holds 5 exact items and 4 loss items, file A 6 exact
    # items; the group's score is mean(mean(Z's accuracy, Z's loss score), A's accuracy). Each resample draws each
    # set's items in pairs, within the set, from one PCG64(7) stream, the sets in the order of their (file, metric)
    # names (A first, though Z comes first in the samples); the interval is numpy's percentiles of the resampled
    # differences.
    rng = np.random.default_rng(5)
    outcome = {("Z", "exact"): rng.integers(0, 2, (2, 5)).astype(bool),
               ("A", "exact"): rng.integers(0, 2, (2, 6)).astype(bool)}
    loss, tokens = rng.uniform(0.5, 3.0, (2, 4)), rng.integers(1, 9, (2, 4))
    sides = []
    for k, name in enumerate(("θG", "ω")):
        samples = [{"group": "general", "file": f, "metric": m, "index": i, "id": f"{f}/{i}", "correct": bool(v)}
                   for (f, m), o in outcome.items() for i, v in enumerate(o[k])]
        samples += [{"group": "general", "file": "Z", "metric": "loss", "index": 5 + i, "id": f"Z/{5 + i}",
                     "loss": float(loss[k, i]), "tokens": int(tokens[k, i])} for i in range(4)]
        scores = [MetricScore("general", f, m, len(o[k]), 100 * o[k].mean()) for (f, m), o in outcome.items()]
        loss_score = 100 * math.exp(-(loss[k] * tokens[k]).sum() / tokens[k].sum())
        scores.append(MetricScore("general", "Z", "loss", 4, loss_score))
        sides.append(EvalReport(name, scores, samples))

    def group_score(k, idx):  # idx: {(file, metric): item indices}
        acc = {key: sum(outcome[key][k][i] for i in idx[key]) / len(idx[key]) for key in outcome}
        held = idx[("Z", "loss")]
        lt = sum(loss[k, i] * tokens[k, i] for i in held) / sum(tokens[k, i] for i in held)
        return (100 * (acc[("Z", "exact")] + math.exp(-lt)) / 2 + 100 * acc[("A", "exact")]) / 2

    stream = np.random.Generator(np.random.PCG64(7))
    sizes = {("A", "exact"): 6, ("Z", "exact"): 5, ("Z", "loss"): 4}
    draws = {key: stream.integers(0, n, size=(300, n)) for key, n in sizes.items()}  # one chunk: the sizes are small
    resampled = [{key: d[r] for key, d in draws.items()} for r in range(300)]
    diffs = [group_score(1, idx) - group_score(0, idx) for idx in resampled]
    everything = {key: range(n) for key, n in sizes.items()}
    group = paired_differences(*sides, resamples=300, seed=7)[-1]
    assert group.file is None and group.n == 15
    assert group.method == "paired-bootstrap(300, seed 7) stratified by eval set"
    assert (group.baseline, group.candidate) == pytest.approx((sides[0].group_score("general"),
                                                               sides[1].group_score("general")))
    assert (group.baseline, group.candidate) == pytest.approx((group_score(0, everything), group_score(1, everything)))
    assert group.delta == pytest.approx(group.candidate - group.baseline)
    assert (group.low, group.high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    assert group.low < group.delta < group.high


def test_different_items_or_sets_are_refused():
    base = report("θG", {("general", "g"): [1, 0]})
    other = report("ω", {("general", "g"): [1, 0]})
    base.samples[0]["item_hash"], other.samples[0]["item_hash"] = "aaaa", "bbbb"
    with pytest.raises(LoraMergeError, match="not the same items"):
        paired_differences(base, other)
    other.samples[0]["item_hash"] = None  # a hash on one side only: not known to be the same item
    with pytest.raises(LoraMergeError, match=r"general/g: rows without unique ids .* rows 0 \(0-based\) differ "
                                             r"between θG and ω"):
        paired_differences(base, other)
    with pytest.raises(LoraMergeError, match="different eval sets"):
        paired_differences(base, report("ω", {("general", "h"): [1, 0]}))
