"""One weight's delta from a pack, a block of rows at a time: what the fold's tiled pruning rules read."""

from __future__ import annotations

import torch

from lora_merge.pack.task_vector import Delta, LowRankDelta, ReplacementDelta, StoredDelta


class DeltaRows:
    """One weight's delta ``factor · Σ coef·Δ`` from one pack, a block of rows at a time.

    LoRA factors are read once; each call multiplies only the rows it is asked for, so a pass over a tensor
    never holds its whole delta. A pack whose delta is one LoRA term gets ``factor · coef`` folded into B, as
    the linear kernel folds ω (stream.merge_terms), so a row block is one matmul and nothing more; the result
    differs from :meth:`TaskVector.delta` (which multiplies after the product) by float rounding only. Other
    terms are computed as TaskVector.delta computes them, then multiplied by ``factor``. A LoRA term's rows are
    bit for bit those of the whole product when blocks are multiples of 64 rows (MKL picks its kernel by
    shape; see stream.tile_rows); stored and replaced tensors are sliced from the memory map.
    """

    def __init__(self, terms: list[tuple[float, Delta]], device: str | torch.device = "cpu", factor: float = 1.0):
        self.parts: list[tuple[float, Delta, torch.Tensor | None, torch.Tensor | None]] = []
        folded = len(terms) == 1 and isinstance(terms[0][1], LowRankDelta)
        for coef, d in terms:
            b, a = d.factors(device) if isinstance(d, LowRankDelta) else (None, None)
            if folded and b is not None:
                b, coef = b * (coef * factor), 1.0
            self.parts.append((coef, d, b, a))
        self.factor = 1.0 if folded else factor
        self.device = device
        self.shape = tuple(terms[0][1].shape)

    def rows(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of the float32 delta, written into ``out`` (that many rows) when given."""
        return self._select(slice(start, stop), out)

    def rows_at(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at ``index`` (a 1-D integer tensor), as :meth:`rows` computes them."""
        return self._select(index, None)

    def _select(self, sel, out: torch.Tensor | None) -> torch.Tensor:
        result: torch.Tensor | None = None
        for coef, d, b, a in self.parts:
            dst = out if result is None else None
            if b is not None and a is not None:
                t = torch.mm(a[:, sel].T, b.T) if d.transpose else torch.mm(b[sel], a, out=dst)
            else:
                t = self._stored(d, sel)
            if dst is not None and t is not dst:
                dst.copy_(t)
                t = dst
            if coef != 1.0:
                t.mul_(coef)
            result = t if result is None else result.add_(t)
        assert result is not None
        return result.mul_(self.factor) if self.factor != 1.0 else result

    def _stored(self, d: Delta, sel) -> torch.Tensor:
        if isinstance(d, StoredDelta):  # copied: the rows are a view of the read-only map, and are scaled in place
            t = d.source.get(d.key)[sel].to(device=self.device, dtype=torch.float32, copy=True)
            return t.mul_(d.scale) if d.scale != 1.0 else t
        if isinstance(d, ReplacementDelta):
            saved = d.source.get(d.key)[sel].to(device=self.device, dtype=torch.float32)
            return saved - d.base.get(d.base_key)[sel].to(device=self.device, dtype=torch.float32)
        return d.materialize(self.device)[sel]
