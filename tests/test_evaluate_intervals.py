"""Paired intervals (lora_merge/evaluate/intervals.py) against published limits and hand-computed cases."""

import math
from statistics import NormalDist

import numpy as np
import pytest

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate import intervals
from lora_merge.evaluate.intervals import Interval, paired_bootstrap_interval, paired_proportion_interval

Z = NormalDist().inv_cdf(0.975)


def _outcomes(e: int, f: int, g: int, h: int) -> tuple[list[bool], list[bool]]:
    """Newcombe's 2×2 table as item outcomes, candidate first: e both, f candidate only, g baseline only."""
    candidate = [True] * e + [True] * f + [False] * g + [False] * h
    baseline = [True] * e + [False] * f + [True] * g + [False] * h
    return baseline, candidate


# Newcombe (1998) Stat Med 17:2635–2650, Table II, method 10 (95 %): the four worked 2×2 tables (e, f, g, h)
# and their published limits, as the propint R package's tests quote them (m-Py/propint,
# tests/testthat/test_Two_Dependent_Props_CI.R). The second and third tables have eh > fg, where the paper's
# φ (numerator reduced by n/2) and the plain φ differ: the plain one would give 0.0618–0.3239 and ±0.0640.
@pytest.mark.parametrize(
    ("table", "low", "high"),
    [
        ((36, 12, 2, 0), 0.0569, 0.3404),
        ((18, 12, 2, 18), 0.0562, 0.3290),
        ((53, 0, 0, 1), -0.0729, 0.0729),
        ((0, 30, 0, 0), 0.8395, 1.0),
    ],
)
def test_newcombe_published_examples(table, low, high):
    e, f, g, h = table
    baseline, candidate = _outcomes(*table)
    result = paired_proportion_interval(baseline, candidate)
    assert result.n == e + f + g + h
    assert result.method == "newcombe-paired"
    assert result.delta == pytest.approx(100 * (f - g) / result.n)
    assert result.low == pytest.approx(100 * low, abs=0.01)
    assert result.high == pytest.approx(100 * high, abs=0.01)


def test_all_items_agree_gives_the_wilson_half_width_by_hand():
    # Both models right on all n items: one margin empty, so φ = 0, and each side is the gap between p = 1 and
    # its Wilson lower limit n/(n + z²): the interval is ±100·z²/(n + z²).
    n = 20
    result = paired_proportion_interval([True] * n, [True] * n)
    half = 100 * Z * Z / (n + Z * Z)
    assert (result.delta, result.low, result.high, result.n) == pytest.approx((0.0, -half, half, n))


def test_all_items_disagree_by_hand():
    # Candidate right and baseline wrong everywhere: δ = 100; below = √2·z²/(n + z²) (both margins' gaps),
    # above = 0 (the candidate's upper limit is 1 and the baseline's lower limit is 0).
    n = 12
    result = paired_proportion_interval([False] * n, [True] * n)
    assert result.delta == pytest.approx(100.0)
    assert result.low == pytest.approx(100 * (1 - math.sqrt(2) * Z * Z / (n + Z * Z)))
    assert result.high == pytest.approx(100.0)
    swapped = paired_proportion_interval([True] * n, [False] * n)
    assert (swapped.delta, swapped.low, swapped.high) == pytest.approx((-100.0, -result.high, -result.low))


def test_swapping_the_models_mirrors_the_interval():
    baseline, candidate = _outcomes(18, 12, 2, 18)
    forward = paired_proportion_interval(baseline, candidate)
    backward = paired_proportion_interval(candidate, baseline)
    assert (backward.delta, backward.low, backward.high) == pytest.approx(
        (-forward.delta, -forward.high, -forward.low)
    )


def test_one_item_has_a_defined_interval():
    # n = 1, both right: the Wilson lower limit of 1/1 is 1/(1 + z²), so the interval is ±100·z²/(1 + z²).
    result = paired_proportion_interval([True], [True])
    half = 100 * Z * Z / (1 + Z * Z)
    assert (result.delta, result.low, result.high, result.n) == pytest.approx((0.0, -half, half, 1))


def test_other_confidence_levels_use_their_quantile():
    z90 = NormalDist().inv_cdf(0.95)
    result = paired_proportion_interval([True] * 10, [True] * 10, confidence=0.90)
    assert result.high == pytest.approx(100 * z90 * z90 / (10 + z90 * z90))


@pytest.mark.parametrize("interval", [paired_proportion_interval, paired_bootstrap_interval])
def test_bad_inputs_are_clear_errors(interval):
    with pytest.raises(LoraMergeError, match="n = 0"):
        interval([], [])
    with pytest.raises(LoraMergeError, match="same items"):
        interval([1, 0], [1])
    with pytest.raises(LoraMergeError, match="confidence"):
        interval([1], [1], confidence=1.0)


def test_bootstrap_of_a_constant_difference_is_that_difference():
    result = paired_bootstrap_interval([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], resamples=50, seed=3)
    assert result == Interval(delta=0.5, low=0.5, high=0.5, n=3, method="paired-bootstrap(50, seed 3)")


def test_bootstrap_matches_a_resample_by_resample_computation():
    # The oracle draws each resample's indices one row at a time from the same generator and takes the
    # percentiles by sorting: the stream, the pairing and the percentile rule written out by hand.
    values = np.random.default_rng(7).normal(size=(2, 37))
    baseline, candidate = values[0].tolist(), (values[1] + 0.3).tolist()
    result = paired_bootstrap_interval(baseline, candidate, resamples=400, seed=11)
    rng = np.random.Generator(np.random.PCG64(11))
    means = []
    for _ in range(400):
        idx = rng.integers(0, 37, size=(1, 37))[0]
        means.append(sum(candidate[i] - baseline[i] for i in idx) / 37)
    means.sort()
    # numpy's linear quantile at q: position q·(m − 1) between the sorted values.
    def quantile(q: float) -> float:
        pos = q * (len(means) - 1)
        lo = math.floor(pos)
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])

    assert result.delta == pytest.approx(float(np.mean(values[1] + 0.3 - values[0])))
    assert result.low == pytest.approx(quantile(0.025))
    assert result.high == pytest.approx(quantile(0.975))
    assert result.method == "paired-bootstrap(400, seed 11)"


def test_bootstrap_does_not_depend_on_the_chunk_size(monkeypatch):
    values = np.random.default_rng(1).normal(size=(2, 50))
    whole = paired_bootstrap_interval(values[0], values[1], resamples=300, seed=5)
    monkeypatch.setattr(intervals, "_BOOTSTRAP_CHUNK_CELLS", 7 * 50)
    chunked = paired_bootstrap_interval(values[0], values[1], resamples=300, seed=5)
    assert chunked == whole
    assert paired_bootstrap_interval(values[0], values[1], resamples=300, seed=6) != whole


def test_bootstrap_refuses_non_finite_values_and_no_resamples():
    with pytest.raises(LoraMergeError, match="finite"):
        paired_bootstrap_interval([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(LoraMergeError, match="resamples"):
        paired_bootstrap_interval([1.0], [2.0], resamples=0)


def test_loss_score_interval_resamples_the_token_weighted_score():
    # Oracle: the score 100·exp(−Σ loss·tokens / Σ tokens) of each model, recomputed on each resample's items
    # drawn one row at a time from the same generator, and the percentiles taken by numpy on those differences.
    rng_values = np.random.default_rng(3)
    b_loss, c_loss = rng_values.uniform(1, 3, 25), rng_values.uniform(0.8, 2.8, 25)
    b_tok, c_tok = rng_values.integers(1, 9, 25), rng_values.integers(1, 9, 25)

    def score(loss, tok, idx):
        return 100 * math.exp(-sum(loss[i] * tok[i] for i in idx) / sum(tok[i] for i in idx))

    result = intervals.paired_loss_score_interval(b_loss, b_tok, c_loss, c_tok, resamples=300, seed=4)
    all_items = range(25)
    assert result.delta == pytest.approx(score(c_loss, c_tok, all_items) - score(b_loss, b_tok, all_items))
    assert intervals.loss_score(b_loss, b_tok) == pytest.approx(score(b_loss, b_tok, all_items))
    rng = np.random.Generator(np.random.PCG64(4))
    diffs = []
    for _ in range(300):
        idx = rng.integers(0, 25, size=(1, 25))[0]
        diffs.append(score(c_loss, c_tok, idx) - score(b_loss, b_tok, idx))
    assert (result.low, result.high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    assert result.method == "paired-bootstrap(300, seed 4)" and result.n == 25
    with pytest.raises(LoraMergeError, match="token count"):
        intervals.paired_loss_score_interval(b_loss, b_tok[:3], c_loss, c_tok)


def test_loglik_interval_delta_by_hand():
    # Baseline: items (loss 2.0, 1 token) and (loss 1.0, 3 tokens): −(2 + 3) / 4 = −1.25 nats per token.
    # Candidate: (loss 1.0, 2 tokens) and (loss 0.5, 2 tokens): −(2 + 1) / 4 = −0.75. Δ = −0.75 − (−1.25) = 0.5.
    result = intervals.paired_loglik_interval([2.0, 1.0], [1, 3], [1.0, 0.5], [2, 2], resamples=200, seed=1)
    assert result.delta == pytest.approx(0.5)
    assert result.n == 2 and result.method == "paired-bootstrap(200, seed 1)"
    # Two items give three resampled sets: {1st, 1st} Δ = −1 + 2 = 1, {2nd, 2nd} Δ = −0.5 + 1 = 0.5 and the pair,
    # Δ = 0.5; the interval lies within those values.
    assert 0.5 <= result.low <= result.high <= 1.0


def test_loglik_interval_of_identical_sides_is_zero():
    loss, tokens = [1.3, 0.7, 2.9, 0.1], [5, 2, 7, 1]
    result = intervals.paired_loglik_interval(loss, tokens, loss, tokens)
    assert (result.delta, result.low, result.high) == (0.0, 0.0, 0.0)


def test_loglik_interval_contains_delta_and_repeats_with_its_seed():
    rng_values = np.random.default_rng(5)
    b_loss, c_loss = rng_values.uniform(1, 3, 30), rng_values.uniform(0.8, 2.8, 30)
    b_tok, c_tok = rng_values.integers(1, 9, 30), rng_values.integers(1, 9, 30)
    first = intervals.paired_loglik_interval(b_loss, b_tok, c_loss, c_tok, resamples=500, seed=7)
    assert first.low < first.delta < first.high
    assert first.delta == pytest.approx(-np.dot(c_loss, c_tok) / c_tok.sum() + np.dot(b_loss, b_tok) / b_tok.sum())
    assert intervals.paired_loglik_interval(b_loss, b_tok, c_loss, c_tok, resamples=500, seed=7) == first
    assert intervals.paired_loglik_interval(b_loss, b_tok, c_loss, c_tok, resamples=500, seed=8) != first


def test_loglik_interval_of_a_shifted_loss_is_the_shift():
    # Every candidate loss lower by c = 0.25 (values exact in binary): every resample's Δ is +c, so is the interval.
    b_loss, tokens = [1.5, 2.25, 0.75, 3.0], [1, 3, 2, 2]
    c = 0.25
    result = intervals.paired_loglik_interval(b_loss, tokens, [v - c for v in b_loss], tokens, resamples=300)
    assert (result.delta, result.low, result.high) == (c, c, c)


def test_loglik_interval_refuses_unpaired_inputs():
    with pytest.raises(LoraMergeError, match="token count"):
        intervals.paired_loglik_interval([1.0, 2.0], [1], [1.0, 2.0], [1, 1])
    with pytest.raises(LoraMergeError, match="same items"):
        intervals.paired_loglik_interval([1.0, 2.0], [1, 1], [1.0], [1])
