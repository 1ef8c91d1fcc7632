"""Paired confidence intervals for the difference between two models scored on the same items.

Two models answer the same items, so their outcomes are paired and the difference is measured with the
items' own variation taken out. Two intervals, both for candidate − baseline:

- :func:`paired_proportion_interval`, for 0/1 outcomes (exact, contains, choice, refusal, compliance):
  Newcombe's hybrid score interval for the difference of paired proportions, method 10 of
  R. G. Newcombe, "Improved confidence intervals for the difference between binomial proportions based on
  paired data", Stat Med 1998;17:2635–2650 (it builds on method 10 of the same author's Stat Med
  1998;17:873–890 for independent proportions). Wilson score limits of each margin, no continuity
  correction, combined with the estimated correlation φ of the two margins. φ follows the paper: its
  numerator ``eh − fg`` is reduced by n/2 (floored at 0) when positive and taken as is when negative, and
  φ = 0 when a margin of the 2×2 table is zero. This is what reproduces the paper's published limits
  (tests/test_evaluate_intervals.py holds them).
- :func:`paired_bootstrap_interval`, for per-item real values: item indices resampled with numpy's
  ``Generator(PCG64(seed))``, the percentile interval of the mean difference.
- :func:`paired_loss_score_interval`, for ``loss`` files: the same bootstrap of the difference of the two
  token-weighted scores (100 / perplexity, :func:`loss_scores`), which are not means of per-item values.
- :func:`paired_loglik_interval`, for ``loss`` files too: the same bootstrap of the difference of the two
  token-weighted mean log-likelihoods per token (−Σ loss·tokens / Σ tokens), in nats per token, a scale on
  which a shift of every item's loss is a shift of the difference by as much (the score's is not).

Every bootstrap here draws from :func:`stratified_resampled_sums`, one stream for one set of items or for
several resampled each within itself (a group's sets, :mod:`lora_merge.evaluate.paired`).

Edge cases, decided here once: no items is a :class:`LoraMergeError` (there is nothing to estimate);
baseline and candidate of different lengths is one too (they are not paired). One item gives the
formula's defined result (Wilson limits exist for n = 1; the bootstrap of one item is its difference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from lora_merge.core.errors import LoraMergeError

NEWCOMBE = "newcombe-paired"
# Cells (resamples × items × columns) gathered at once: bounds the memory of a large eval set. One set's
# draws are the same whatever the chunk size, because the generator's stream is consumed in order.
_BOOTSTRAP_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A paired difference and its confidence interval.

    For proportions, ``delta``, ``low`` and ``high`` are in points on the 0–100 scale; for the bootstrap they
    are on the scale of the values given (a loss in nats stays in nats).
    """

    delta: float  # candidate − baseline, on the 0–100 scale
    low: float
    high: float
    n: int
    method: str  # e.g. "newcombe-paired" or "paired-bootstrap(2000, seed 0)"


def _check_pairs(baseline: Sequence, candidate: Sequence, confidence: float) -> int:
    if len(baseline) != len(candidate):
        raise LoraMergeError(
            f"paired interval: baseline has {len(baseline)} items and candidate {len(candidate)}; "
            "a paired comparison needs the same items on both sides"
        )
    if not len(baseline):
        raise LoraMergeError("paired interval: no items to compare (n = 0)")
    if not 0.0 < confidence < 1.0:
        raise LoraMergeError(f"paired interval: confidence must be between 0 and 1, got {confidence}")
    return len(baseline)


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for one proportion (no continuity correction), as (lower, upper)."""
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _phi(e: int, f: int, g: int, h: int, n: int) -> float:
    """The correlation of the two margins as Newcombe's method 10 estimates it (see the module docstring)."""
    margins = (e + f) * (g + h) * (e + g) * (f + h)
    if margins == 0:
        return 0.0
    numerator = float(e * h - f * g)
    if numerator > 0:
        numerator = max(numerator - n / 2.0, 0.0)
    return numerator / math.sqrt(margins)


def paired_proportion_interval(
    baseline: Sequence[bool], candidate: Sequence[bool], confidence: float = 0.95
) -> Interval:
    """Newcombe's method-10 interval for candidate − baseline on 0/1 outcomes of the same items, in points."""
    n = _check_pairs(baseline, candidate, confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    # The paired 2×2 table with the candidate first, so θ = p1 − p2 = candidate − baseline as in the paper.
    e = f = g = h = 0
    for base, cand in zip(baseline, candidate, strict=True):
        if cand and base:
            e += 1
        elif cand:
            f += 1
        elif base:
            g += 1
        else:
            h += 1
    p1, p2 = (e + f) / n, (e + g) / n
    l1, u1 = wilson_interval(e + f, n, z)
    l2, u2 = wilson_interval(e + g, n, z)
    phi = _phi(e, f, g, h, n)
    # max(0, ·): rounding can take the radicand a hair below zero when the two terms are equal and φ = 1.
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    theta = p1 - p2
    return Interval(
        delta=100.0 * theta,
        low=100.0 * (theta - below),
        high=100.0 * (theta + above),
        n=n,
        method=NEWCOMBE,
    )


def bootstrap_method(resamples: int, seed: int) -> str:
    """The ``method`` string of a paired bootstrap: the resamples and the seed, so the run can be repeated."""
    return f"paired-bootstrap({resamples}, seed {seed})"


def stratified_resampled_sums(strata: Sequence[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Per stratum, (resamples, k): the sums of its n×k columns over n of its item indices drawn with replacement.

    Every paired bootstrap here draws its indices from this one stream, ``Generator(PCG64(seed))``: for each
    chunk of resamples, each stratum's indices in turn (the strata in the order given). One stratum's draws
    do not depend on the chunk size, as the stream is consumed in order; several strata's depend on it, and it
    is a function of the sizes alone, so the same inputs give the same draws.
    """
    if resamples < 1:
        raise LoraMergeError(f"paired bootstrap: resamples must be at least 1, got {resamples}")
    if not all(np.all(np.isfinite(c)) for c in strata):
        raise LoraMergeError("paired bootstrap: the values must be finite numbers (found NaN or inf)")
    rng = np.random.Generator(np.random.PCG64(seed))
    rows = max(1, _BOOTSTRAP_CHUNK_CELLS // sum(c.shape[0] * c.shape[1] for c in strata))
    sums = [np.empty((resamples, c.shape[1]), dtype=np.float64) for c in strata]
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        for columns, out in zip(strata, sums, strict=True):
            indices = rng.integers(0, columns.shape[0], size=(stop - start, columns.shape[0]))
            out[start:stop] = columns[indices].sum(axis=1)
    return sums


def percentile_bounds(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of resampled values: the (1 − confidence)/2 and (1 + confidence)/2 quantiles."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap_interval(
    baseline: Sequence[float],
    candidate: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of mean(candidate − baseline), items resampled in pairs.

    ``delta`` is the observed mean difference, on the scale of the values. Each resample draws n item
    indices with replacement from ``numpy.random.Generator(PCG64(seed))``; the interval is the
    ``(1 − confidence)/2`` and ``(1 + confidence)/2`` quantiles (numpy's default, linear) of the resampled
    mean differences. The same inputs, resamples and seed give the same interval.
    """
    n = _check_pairs(baseline, candidate, confidence)
    differences = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    means = stratified_resampled_sums([differences.reshape(n, 1)], resamples, seed)[0][:, 0] / n
    low, high = percentile_bounds(means, confidence)
    return Interval(float(differences.mean()), low, high, n, bootstrap_method(resamples, seed))


def loss_scores(weighted_loss: np.ndarray | float, tokens: np.ndarray | float) -> np.ndarray:
    """``loss`` scores from sums over items: 100·exp(−Σ loss·tokens / Σ tokens), elementwise (0 tokens: 100)."""
    return 100.0 * np.exp(-np.asarray(weighted_loss, dtype=np.float64) / np.maximum(tokens, 1.0))


def loss_score(loss: Sequence[float], tokens: Sequence[int]) -> float:
    """A loss file's score as ``eval`` reports it: 100·exp(−token-weighted mean loss), i.e. 100 / perplexity."""
    weights = np.asarray(tokens, dtype=np.float64)
    return float(loss_scores(np.dot(np.asarray(loss, dtype=np.float64), weights), weights.sum()))


def _resampled_loss_sums(
    baseline_loss: Sequence[float],
    baseline_tokens: Sequence[int],
    candidate_loss: Sequence[float],
    candidate_tokens: Sequence[int],
    resamples: int,
    seed: int,
    confidence: float,
) -> tuple[int, np.ndarray, np.ndarray]:
    """n, then (4,) over all items and (resamples, 4) per resample: Σ loss·tokens and Σ tokens, baseline first.

    Each model keeps its own token counts (two tokenizers may split a reference differently). One bootstrap
    draw, :func:`stratified_resampled_sums` over the n items, serves every loss-file interval.
    """
    n = _check_pairs(baseline_loss, candidate_loss, confidence)
    if len(baseline_tokens) != n or len(candidate_tokens) != n:
        raise LoraMergeError("paired loss interval: every item needs its loss and its token count on both sides")
    columns = np.empty((n, 4), dtype=np.float64)
    for j, (loss, tokens) in enumerate(((baseline_loss, baseline_tokens), (candidate_loss, candidate_tokens))):
        weights = np.asarray(tokens, dtype=np.float64)
        columns[:, 2 * j] = np.asarray(loss, dtype=np.float64) * weights
        columns[:, 2 * j + 1] = weights
    return n, columns.sum(axis=0), stratified_resampled_sums([columns], resamples, seed)[0]


def paired_loss_score_interval(
    baseline_loss: Sequence[float],
    baseline_tokens: Sequence[int],
    candidate_loss: Sequence[float],
    candidate_tokens: Sequence[int],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Paired bootstrap of the difference of two ``loss`` scores (100 / perplexity, 0–100), in points.

    ``*_loss`` is each item's mean token loss (nats per reference token) and ``*_tokens`` its token count, as
    ``eval`` writes them to samples.jsonl; each model keeps its own counts (two tokenizers may split a reference
    differently). A score is token-weighted (:func:`loss_score`), so it is not a mean of per-item values and is
    resampled whole: each resample draws n item indices from ``Generator(PCG64(seed))`` (the same stream as
    :func:`paired_bootstrap_interval`), scores both models on those items, and the interval is the percentile
    interval of the score differences. ``delta`` is the observed difference of the two scores.
    """
    n, _, sums = _resampled_loss_sums(baseline_loss, baseline_tokens, candidate_loss, candidate_tokens,
                                      resamples, seed, confidence)
    low, high = percentile_bounds(loss_scores(sums[:, 2], sums[:, 3]) - loss_scores(sums[:, 0], sums[:, 1]),
                                  confidence)
    delta = loss_score(candidate_loss, candidate_tokens) - loss_score(baseline_loss, baseline_tokens)
    return Interval(delta, low, high, n, bootstrap_method(resamples, seed))


def _loglik_differences(sums: np.ndarray) -> np.ndarray:
    """Candidate − baseline mean log-likelihood per token, −Σ loss·tokens / Σ tokens, from the (…, 4) sums."""
    return sums[..., 0] / np.maximum(sums[..., 1], 1.0) - sums[..., 2] / np.maximum(sums[..., 3], 1.0)


def paired_loglik_interval(
    baseline_loss: Sequence[float],
    baseline_tokens: Sequence[int],
    candidate_loss: Sequence[float],
    candidate_tokens: Sequence[int],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Paired bootstrap of candidate − baseline token-weighted mean log-likelihood per token, in nats per token.

    The inputs are those of :func:`paired_loss_score_interval`, and so are the draws (the same stream, the same
    seed, the same resampled items) and the percentile interval; only the statistic differs: each model's
    −Σ loss·tokens / Σ tokens on the resampled items (0 where they have no token). Positive means the candidate
    gives the reference answers more likelihood. ``delta`` is the observed difference over all items.
    """
    n, totals, sums = _resampled_loss_sums(baseline_loss, baseline_tokens, candidate_loss, candidate_tokens,
                                           resamples, seed, confidence)
    low, high = percentile_bounds(_loglik_differences(sums), confidence)
    return Interval(float(_loglik_differences(totals)), low, high, n, bootstrap_method(resamples, seed))
