"""TIES, DARE and magnitude pruning by row tiles: the fold's CPU path for the pruning rules.

:mod:`lora_merge.rules.combine` states each rule on whole deltas, and tests/test_rules_combine.py holds it to PEFT's
merge_utils. This module applies the same arithmetic one row tile at a time to each pack's
:class:`~lora_merge.fold.delta_rows.DeltaRows`, so no pack's delta is ever held whole and every step runs on
cache-sized blocks (tests/test_fold_tiled_rules.py holds it to PEFT's merge_utils too):

- **The deltas** are ω·Δ with ω folded into B as the linear kernel folds it, and for DARE 1/density as well,
  so each pack's tile is one matmul: equal to TaskVector.delta's, and to what PEFT multiplies, up to float
  rounding.
- **Trimming** (ties, magnitude_prune) needs each pack's k-th largest |δ| over the whole tensor, which
  :mod:`lora_merge.fold.magnitude_select` finds exactly in about a pass and a quarter.
- **DARE masks** are the very draws :func:`lora_merge.rules.combine.drop_and_rescale` makes: one generator per
  tensor seeded by ``tensor_seed``, pack after pack, row-major, each draw's low 24 bits compared with
  ⌈p·2²⁴⌉ as torch.bernoulli compares them with p. All but the last pack's masks are drawn first and kept as
  bytes; the last pack's are drawn tile by tile in the final pass.
- **The final pass** recomputes each pack's rows, trims or masks them, sums them or elects signs the TIES
  way, and adds θ, with combine's operations in combine's order. Trimming and the election are one compiled
  loop (:func:`lora_merge.rules.kernels.trim_and_elect`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from lora_merge.fold.delta_rows import DeltaRows
from lora_merge.fold.magnitude_select import Scratch, top_magnitudes
from lora_merge.pack.task_vector import Delta
from lora_merge.rules.combine import KeepDraws, RuleOptions, tensor_seed

TILED_RULES = frozenset({"ties", "dare_ties", "dare_linear", "magnitude_prune"})
ELECTING = frozenset({"ties", "dare_ties"})  # the others sum the pruned deltas
TRIMMING = frozenset({"ties", "magnitude_prune"})


def tiles_for(method: str) -> bool:
    """Whether ``--method`` has a tiled path here (on the CPU, for 2-D tensors)."""
    return method in TILED_RULES


def pruned_tiles(theta: torch.Tensor, terms: Sequence[list[tuple[float, Delta]]], method: str, opts: RuleOptions,
                 name: str, tiles: Sequence[tuple[int, int]], out: torch.Tensor, scratch: Scratch
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, rows of cast(θ.float() + rule(deltas))) for each row tile of the 2-D ``theta``.

    ``terms`` are each pack's (ω, Δ) terms for this weight (TaskVector.terms[name]), in pack order; ``tiles``
    the row ranges (multiples of 64 rows, so a LoRA product's rows are those of the whole). ``out`` is a 1-D
    buffer of the output dtype as large as the largest tile, reused by every tile (each yielded view is valid
    until the next).
    """
    rows, cols = theta.shape
    trim = method in TRIMMING
    rescale = 1.0 if trim or opts.density >= 1.0 else 1.0 / opts.density  # DARE's 1/p, folded into the deltas
    sources = [DeltaRows(t, "cpu", rescale) for t in terms]
    lambdas = trim_lambdas(sources, (rows, cols), opts.density, tiles, scratch) if trim else None
    draws = DareDraws(sources, rows * cols, opts, name, scratch) if not trim else None
    for r0, r1 in tiles:
        n = (r1 - r0) * cols
        stacked = scratch.get("deltas", len(sources) * n).view(len(sources), r1 - r0, cols)
        deltas = [src.rows(r0, r1, out=stacked[k]) for k, src in enumerate(sources)]
        if draws is not None:
            for k, d in enumerate(deltas):
                draws.apply(k, r0 * cols, d)
        if method in ELECTING:
            merged = elect(stacked.view(len(sources), n), lambdas, scratch).view(r1 - r0, cols)
        else:
            for d, lam in zip(deltas, lambdas or (), strict=False):
                if lam is not None:
                    torch.hardshrink(d, lam, out=d)
            merged = add_up(stacked, scratch, n)
        dst = out[:n].view(r1 - r0, cols)
        dst.copy_(merged.add_(theta[r0:r1]))  # θ in float32 + the merge, rounded once into the output dtype
        yield r0, dst


def add_up(stacked: torch.Tensor, scratch: Scratch, n: int) -> torch.Tensor:
    """Σ over the packs' tiles, as combine.linear sums (torch.stack(…).sum(0): from 5 packs on, torch sums in
    a cascade whose rounding differs from adding one by one, so the same call is made on the tile)."""
    if len(stacked) == 1:
        return stacked[0]
    return torch.sum(stacked, 0, out=scratch.get("sum", n).view(stacked.shape[1:]))


def elect(deltas: torch.Tensor, lambdas: Sequence[float | None] | None, scratch: Scratch) -> torch.Tensor:
    """TIES' trim (each pack's |δ| ≤ λ zeroed; None or no λs: none) and election on one tile, as combine.ties
    computes them: the K × n ``deltas`` (overwritten) merged into a float32 scratch tile of n entries."""
    from lora_merge.rules import kernels  # numba: only the pruning rules load it

    k, n = deltas.shape
    lam = np.array([-1.0 if x is None else x for x in (lambdas or [None] * k)], dtype=np.float32)
    out = scratch.get("merged", n)
    kernels.trim_and_elect(deltas.numpy(), lam, out.numpy())
    return out


class DareDraws:
    """One tensor's DARE masks, drawn in the order combine.drop_and_rescale draws them."""

    def __init__(self, sources: Sequence[DeltaRows], numel: int, opts: RuleOptions, name: str, scratch: Scratch):
        self.scratch = scratch
        self.active = opts.density < 1.0  # density 1 draws nothing (combine returns the deltas as they are)
        self.last = len(sources) - 1
        if not self.active:
            return
        from lora_merge.rules.kernels import apply_keeps  # numba: only the pruning rules load it

        self.apply_keeps = apply_keeps
        self.draws = KeepDraws(tensor_seed(opts.seed, name), opts.density)
        # packs before the last: every mask now, as bytes (1 keep, 0 drop), in stream order
        self.ahead = scratch.get("masks", self.last * numel, torch.int8).view(self.last, numel) if self.last else None
        for k in range(self.last):
            self.draws.draw(self.ahead[k].numpy().view(np.bool_))

    def apply(self, k: int, start: int, d: torch.Tensor) -> None:
        """Mask pack k's rows (already ×1/p) that begin at flat index ``start`` (the last pack's are drawn now)."""
        if not self.active:
            return
        n = d.numel()
        if k == self.last:
            mask = self.scratch.get("tile_mask", n, torch.int8)
            self.draws.draw(mask.numpy().view(np.bool_))
        else:
            assert self.ahead is not None
            mask = self.ahead[k, start:start + n]
        self.apply_keeps(d.view(-1).numpy(), mask.numpy())  # δ/p · 1 or · 0, as combine multiplies by its mask


def trim_lambdas(sources: Sequence[DeltaRows], shape: tuple[int, int], density: float,
                 tiles: Sequence[tuple[int, int]], scratch: Scratch) -> list[float | None]:
    """Per pack, the hardshrink λ that keeps exactly the entries combine.keep_top_magnitude keeps (None: all)."""
    if density >= 1.0:
        return [None] * len(sources)
    n = shape[0] * shape[1]
    k = int(density * n)
    if k == 0:
        return [math.inf] * len(sources)  # keep none
    found = top_magnitudes(sources, shape, k, tiles, scratch)
    return [float(np.nextafter(np.float32(t), np.float32(-np.inf))) for t in found]  # |δ| > λ ⇔ |δ| ≥ t
