"""The machine's float32 matrix-multiply rate, printed beside every benchmark's timings.

Timings from two machines only compare once their matmul rates are known: the same job ran 3× slower on a 2-core
AMD EPYC VM (AVX2 only) than on the machine docs/results.md was timed on. The shape is a training step's: a batch
of 8 × 96 tokens through SmolLM2-135M's MLP up-projection (576 → 1536), on torch's current threads.
"""

from __future__ import annotations

import time

SHAPE = (8 * 96, 576, 1536)  # tokens × hidden → intermediate: the demo's training shape
MIN_SECONDS = 1.0  # repeat until at least this long, so a timer tick does not decide the rate


def matmul_gflops(shape: tuple[int, int, int] = SHAPE, min_seconds: float = MIN_SECONDS) -> float:
    """GFLOP/s of ``a @ b`` with ``a`` m×k and ``b`` k×n in float32 (2·m·k·n operations a product)."""
    import torch

    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b  # the first call sets up BLAS's buffers; not timed
    reps, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds:
        a @ b
        reps += 1
    return 2.0 * m * k * n * reps / elapsed / 1e9


def rate_line() -> str:
    """One line for a benchmark's output: the rate, the shape and torch's threads."""
    import torch

    m, k, n = SHAPE
    return (f"matmul rate: {matmul_gflops():.0f} GFLOP/s float32 ({m}×{k} @ {k}×{n}, "
            f"{torch.get_num_threads()} threads)")
