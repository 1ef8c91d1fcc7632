"""Compiled loops (numba) for the pruning rules' hot paths: DARE's keep draws and masks, TIES' trim and election,
and the trimming threshold's selection pass (count-and-gather) and sample (bucket counts).

In torch each of these is a chain of whole-array operations (TIES' election alone is about 20 passes over every
tile), while one loop does the same arithmetic in a single pass over data that stays in the L1 cache. Every loop
computes what :mod:`lora_merge.rules.combine` states, operation for operation in the same order, so the oracle tests
against PEFT's merge_utils hold them as they held the torch code. All release the GIL, so the fold's merge
workers run them side by side. Only the pruning rules import this module: importing numba and loading the
compiled loops from its cache is a start-up cost the linear fold and the light commands never pay, and compiling
them is slower still, so `make` does it once (`python -m lora_merge.rules.kernels`). The figures are in
docs/benchmarks.md, "The pruning rules' hot loops, compiled with numba".
"""

from __future__ import annotations

import numpy as np
from numba import njit

# MT19937, as torch's CPU generator runs it (aten/src/ATen/core/MT19937RNGEngine.h): the standard engine.
_N, _M = 624, 397
_CHUNK = 256  # entries per block of the election: its running sums stay in L1

_compiled = njit(nogil=True, cache=True, error_model="numpy")  # numpy's error model: no zero-division checks


class MT19937:
    """One MT19937 stream seeded as ``torch.Generator().manual_seed(seed)`` seeds it, at its first word."""

    def __init__(self, seed: int):
        self.words = np.empty(_N, dtype=np.uint32)
        self.position = np.array([_N], dtype=np.int64)  # all words used: the next draw regenerates them
        _seed(seed & 0xFFFFFFFF, self.words)  # torch seeds the engine with the low 32 bits


@_compiled
def _seed(seed, words):
    s = np.uint32(seed)
    words[0] = s
    for i in range(1, _N):
        s = np.uint32(np.uint32(1812433253) * (s ^ (s >> np.uint32(30))) + np.uint32(i))
        words[i] = s


@njit(nogil=True, cache=True, inline="always")
def _mix(a, b, c):
    y = (a & np.uint32(0x80000000)) | (b & np.uint32(0x7FFFFFFF))
    return c ^ (y >> np.uint32(1)) ^ ((np.uint32(0) - (y & np.uint32(1))) & np.uint32(0x9908B0DF))


@_compiled
def _regenerate(w):
    for i in range(_N - _M):
        w[i] = _mix(w[i], w[i + 1], w[i + _M])
    for i in range(_N - _M, _N - 1):
        w[i] = _mix(w[i], w[i + 1], w[i + _M - _N])
    w[_N - 1] = _mix(w[_N - 1], w[0], w[_M - 1])


@_compiled
def draw_keeps(words, position, bound, keep):
    """keep[i] ← 1 when the stream's next word's low 24 bits are below ``bound``, else 0, for every i in order
    (torch.bernoulli's test: one word per entry, u = low 24 bits / 2²⁴ < p ⇔ low 24 bits < ⌈p·2²⁴⌉)."""
    p = position[0]
    n = keep.shape[0]
    b = np.uint32(bound)
    i = 0
    while i < n:
        if p >= _N:
            _regenerate(words)
            p = 0
        m = min(_N - p, n - i)
        # slices, not words[p + j]: numba then vectorises the loop below (docs/benchmarks.md, "Figures the code cites")
        block, out = words[p:p + m], keep[i:i + m]
        for j in range(m):
            y = block[j]
            y ^= y >> np.uint32(11)
            y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
            y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
            y ^= y >> np.uint32(18)
            out[j] = np.uint8((y & np.uint32(0xFFFFFF)) < b)
        p += m
        i += m
    position[0] = p


@_compiled
def apply_keeps(values, keep):
    """values ← values · keep (keep: 1 or 0 per entry, as combine multiplies by its mask)."""
    for i in range(values.shape[0]):
        values[i] *= np.float32(keep[i])


@_compiled
def trim_and_elect(deltas, lambdas, out):
    """out ← TIES' merge of the rows of ``deltas`` (K × n, float32), as combine.ties computes it.

    Pack k's entries with |δ| ≤ lambdas[k] are zeroed first (hardshrink; a negative λ keeps all, and ``deltas``
    keeps the trimmed values). Then per entry: the elected sign is + where the mass Σk δk (summed in pack order) is
    ≥ 0; the entries of that strict sign are summed in pack order and divided by their count (at least 1). A NaN
    in any pack's entry makes that output entry NaN, as in combine.
    """
    k_packs, n = deltas.shape
    mass = np.empty(_CHUNK, np.float32)
    total = np.empty(_CHUNK, np.float32)
    count = np.empty(_CHUNK, np.float32)
    zero, one = np.float32(0.0), np.float32(1.0)
    for c0 in range(0, n, _CHUNK):
        m = min(_CHUNK, n - c0)
        for i in range(m):
            total[i] = zero
            count[i] = zero
        for k in range(k_packs):
            lam = lambdas[k]
            row = deltas[k, c0:c0 + m]
            for i in range(m):
                d = row[i]
                if lam >= zero and abs(d) <= lam:  # hardshrink's test: NaN is kept, and flows on as in combine
                    d = zero
                row[i] = d
                mass[i] = d if k == 0 else mass[i] + d
        for k in range(k_packs):
            row = deltas[k, c0:c0 + m]
            for i in range(m):
                d = row[i]
                agree = one if ((d > zero) if mass[i] >= zero else (d < zero)) else zero
                total[i] += d * agree  # multiplied, as combine does: NaN · 0 stays NaN, so the fold's check sees it
                count[i] += agree
        dst = out[c0:c0 + m]
        for i in range(m):
            dst[i] = total[i] / max(count[i], one)


@_compiled
def count_and_gather(values, lo_bits, hi_bits, inside):
    """(how many |values| are ≥ hi, how many lie in [lo, hi)); those are written to the start of ``inside``.

    ``lo_bits``/``hi_bits`` are the bit patterns (uint32) of the non-negative float32 bounds: non-negative floats
    order like their bit patterns, so |x| is compared as its bits with the sign bit cleared. NaN (bits above
    +inf's) is neither above nor inside, as float comparisons have it.
    """
    bits = values.view(np.uint32)
    magnitude, infinity = np.uint32(0x7FFFFFFF), np.uint32(0x7F800000)
    above = 0
    for i in range(bits.shape[0]):
        u = bits[i] & magnitude
        above += (u >= hi_bits) & (u <= infinity)
    width = hi_bits - lo_bits
    j = 0
    for i in range(bits.shape[0]):  # inside is a few per cent: a branch, mostly not taken
        if (bits[i] & magnitude) - lo_bits < width:  # unsigned: below lo wraps around to ≥ width
            inside[j] = abs(values[i])
            j += 1
    return above, j


@_compiled
def magnitude_buckets(values):
    """(first bucket, counts): how many |values| fall in each bucket from the first used to the last used, a
    bucket being the top 16 bits of |x| (exponent and 7 mantissa bits). Four interleaved histograms, summed at
    the end, so that runs of equal buckets do not wait on each other's increments."""
    bits = values.view(np.uint32)
    n = bits.shape[0]
    magnitude, shift = np.uint32(0x7FFFFFFF), np.uint32(16)
    first, last = np.uint32(0xFFFF), np.uint32(0)
    for i in range(n):
        key = (bits[i] & magnitude) >> shift
        first = min(first, key)
        last = max(last, key)
    if n == 0:
        return 0, np.zeros(0, np.int64)
    counts = np.zeros((4, np.int64(last) - np.int64(first) + 1), np.int64)
    whole = n - n % 4
    for i in range(0, whole, 4):
        counts[0, ((bits[i] & magnitude) >> shift) - first] += 1
        counts[1, ((bits[i + 1] & magnitude) >> shift) - first] += 1
        counts[2, ((bits[i + 2] & magnitude) >> shift) - first] += 1
        counts[3, ((bits[i + 3] & magnitude) >> shift) - first] += 1
    for i in range(whole, n):
        counts[0, ((bits[i] & magnitude) >> shift) - first] += 1
    return np.int64(first), counts[0] + counts[1] + counts[2] + counts[3]


def compile_all() -> None:
    """Compile every loop (or load it from numba's cache) with the argument types the rules pass, so that the first
    fold needing them does not wait for the compiler. `make` runs this once after installing."""
    values, spare = np.zeros(8, np.float32), np.empty(8, np.float32)
    magnitude_buckets(values)
    count_and_gather(values, np.uint32(0), np.uint32(1), spare)
    trim_and_elect(np.zeros((2, 8), np.float32), np.full(2, -1.0, np.float32), spare)
    stream = MT19937(0)
    draw_keeps(stream.words, stream.position, 1 << 23, np.empty(8, np.uint8))
    apply_keeps(values, np.ones(8, np.int8))


if __name__ == "__main__":
    compile_all()
