"""The k-th largest |δ| of a pack's delta, exactly, from row tiles (the trimming threshold of ties and
magnitude_prune, as combine.keep_top_magnitude defines it).

Non-negative floats order like their bit patterns, so the top 16 bits of |δ| (exponent and 7 mantissa bits)
sort it into 32 768 buckets. Two steps:

1. **Bracket.** Every 4th row's |δ| is counted by bucket, in 16 groups of neighbouring rows. The sample places
   the k-th largest in some bucket; how much the groups disagree says how far off that can be (rows differ,
   so the sample's error is estimated from them, not assumed). The bracket spans that place ± 4.5 such errors.
2. **Select.** One pass over every tile counts the entries above the bracket and gathers the few inside it
   (a few per cent); the k-th largest is the (k − above)-th largest of those.

Step 2 knows when the bracket missed (the counts say so). Those packs are then bracketed exactly, by counting
every row's buckets (the k-th lies in one bucket, a few entries per thousand), and selected again. Either way
the value is exact; a good sample only saves three quarters of a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lora_merge.fold.delta_rows import DeltaRows
from lora_merge.rules.combine import kth_smallest

BUCKETS = 1 << 15  # top 16 bits of a non-negative float32
SAMPLE_STRIDE = 4  # the bracket's sample: every 4th row …
GROUPS = 16  # … in this many groups of neighbouring rows, whose spread gives the sample's error
MARGIN_SIGMAS = 4.5  # a miss costs one more pass; a wider bracket costs every pass more gathering
Bracket = tuple[float, float]  # [lo, hi) of |δ|


class Scratch:
    """Flat buffers one worker reuses across tensors (grown when a tensor needs more)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, key: str, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buf = self.buffers.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = self.buffers[key] = torch.empty(numel, dtype=dtype)
        return buf[:numel]


def top_magnitudes(sources: Sequence[DeltaRows], shape: tuple[int, int], k: int,
                   tiles: Sequence[tuple[int, int]], scratch: Scratch) -> list[float]:
    """Each source's k-th largest |δ| (1 ≤ k ≤ rows·cols), exactly, over the row ``tiles``."""
    if len(tiles) == 1:  # the whole delta is one tile
        return [_kth_largest(src.rows(0, shape[0]), k) for src in sources]
    found = select_in_brackets(sources, [sampled_bracket(s, shape, k) for s in sources], k, tiles, scratch)
    missed = [i for i, f in enumerate(found) if f is None]
    if missed:  # the sample misled: bracket those exactly, then the selection cannot miss
        again = [sources[i] for i in missed]
        for i, f in zip(missed, select_in_brackets(again, exact_brackets(again, k, tiles, scratch), k, tiles,
                                                   scratch), strict=True):
            found[i] = f
    return found  # type: ignore[return-value]


def select_in_brackets(sources: Sequence[DeltaRows], brackets: Sequence[Bracket], k: int,
                       tiles: Sequence[tuple[int, int]], scratch: Scratch) -> list[float | None]:
    """One pass: the k-th largest |δ| of each source if its bracket holds it, else None."""
    from lora_merge.rules.kernels import count_and_gather  # numba: only the pruning rules load it

    cols = sources[0].shape[1]
    above = [0] * len(sources)
    inside: list[list[np.ndarray]] = [[] for _ in sources]
    for r0, r1 in tiles:
        m = (r1 - r0) * cols
        gathered = scratch.get("inside", m).numpy()
        for i, src in enumerate(sources):
            lo, hi = (np.float32(x).view(np.uint32) for x in brackets[i])
            a = src.rows(r0, r1, out=scratch.get("select", m).view(r1 - r0, cols)).numpy().reshape(-1)
            n_above, n_inside = count_and_gather(a, lo, hi, gathered)
            above[i] += n_above
            inside[i].append(gathered[:n_inside].copy())
    found: list[float | None] = []
    for i in range(len(sources)):
        values = np.concatenate(inside[i])
        rank = k - above[i]  # the k-th largest overall is the rank-th largest below hi
        found.append(kth_largest_of(values, rank) if 1 <= rank <= len(values) else None)
    return found


def kth_largest_of(values: np.ndarray, k: int) -> float:
    """The k-th largest of non-negative float32 ``values``: its bucket first (a count by top 16 bits), then a
    partition of that bucket alone (a few per cent of a bracket's values)."""
    keys = values.view(np.int32) >> 16
    low = int(keys.min())
    counts = np.bincount(keys - low)
    at_or_above = np.cumsum(counts[::-1])[::-1]
    b = _bucket_of(at_or_above, k)
    above = int(at_or_above[b + 1]) if b + 1 < len(counts) else 0
    bucket = values[keys == b + low]
    j = len(bucket) - (k - above)
    return float(np.partition(bucket, j)[j])


def sampled_bracket(src: DeltaRows, shape: tuple[int, int], k: int) -> Bracket:
    """[lo, hi) that very likely holds the k-th largest |δ|, from every SAMPLE_STRIDE-th row."""
    rows = torch.arange(0, shape[0], SAMPLE_STRIDE)
    groups = [g for g in torch.tensor_split(rows, min(GROUPS, len(rows))) if len(g)]
    counts, first = _aligned([_bucket_counts(src.rows_at(g)) for g in groups])
    sizes = counts.sum(1)
    fraction = k / (shape[0] * shape[1])  # of the entries, at or above the k-th largest
    total = np.cumsum(counts.sum(0)[::-1])[::-1]  # entries in bucket b or higher
    n = int(sizes.sum())
    b = _bucket_of(total, fraction * n)
    spread = counts[:, b:].sum(1) / sizes  # each group's share at or above that bucket
    sigma = (spread.std(ddof=1) / math.sqrt(len(groups)) if len(groups) > 1 else 1.0) \
        + math.sqrt(fraction * (1 - fraction) / n)
    margin = MARGIN_SIGMAS * sigma
    hi = math.inf if fraction - margin <= 0 else _edges(first + _bucket_of(total, (fraction - margin) * n))[1]
    lo = 0.0 if fraction + margin >= 1 else _edges(first + _bucket_of(total, (fraction + margin) * n))[0]
    return lo, hi


def exact_brackets(sources: Sequence[DeltaRows], k: int, tiles: Sequence[tuple[int, int]],
                   scratch: Scratch) -> list[Bracket]:
    """The bucket that holds each source's k-th largest |δ|, from every row (a full counting pass)."""
    cols = sources[0].shape[1]
    counts = [np.zeros(BUCKETS, dtype=np.int64) for _ in sources]
    for r0, r1 in tiles:
        for i, src in enumerate(sources):
            rows = src.rows(r0, r1, out=scratch.get("select", (r1 - r0) * cols).view(r1 - r0, cols))
            first, found = _bucket_counts(rows)
            counts[i][first:first + len(found)] += found
    return [_edges(_bucket_of(np.cumsum(c[::-1])[::-1], k)) for c in counts]


def _bucket_counts(rows: torch.Tensor) -> tuple[int, np.ndarray]:
    """(first bucket, how many |rows| fall in it and each bucket after it, up to the last one used). Only the
    buckets in use are counted: a delta's magnitudes span a few thousand of the 32 768."""
    from lora_merge.rules.kernels import magnitude_buckets  # numba: only the pruning rules load it

    first, counts = magnitude_buckets(rows.contiguous().numpy().reshape(-1))
    return int(first), counts


def _aligned(parts: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, int]:
    """Per-group counts from :func:`_bucket_counts` side by side on common buckets, and the first bucket's index."""
    first = min(f for f, _ in parts)
    counts = np.zeros((len(parts), max(f + len(c) for f, c in parts) - first), dtype=np.int64)
    for row, (f, c) in zip(counts, parts, strict=True):
        row[f - first:f - first + len(c)] = c
    return counts, first


def _bucket_of(at_or_above: np.ndarray, count: float) -> int:
    """The highest bucket with at least ``count`` entries at or above it (0 when none has)."""
    hits = np.flatnonzero(at_or_above >= max(count, 1))
    return int(hits[-1]) if len(hits) else 0


def _edges(b: int) -> Bracket:
    """The float values [lo, hi) whose top 16 bits are b (the top finite bucket ends at +inf)."""
    edges = np.array([b << 16, (b + 1) << 16], dtype=np.int64).astype(np.uint32).view(np.float32)
    return float(edges[0]), float(edges[1])


def _kth_largest(delta: torch.Tensor, k: int) -> float:
    magnitude = delta.abs().reshape(-1)
    return float(kth_smallest(magnitude, magnitude.numel() - k + 1))
