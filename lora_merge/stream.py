"""The fold's pipeline: θG's tensors flow read → merge → write, overlapped, in bounded memory.

A worker thread prepares each output tensor, in plan order, while the calling
thread writes the ones before it; at most ``depth`` prepared tensors wait at
once, each in a buffer from a small pool that is reused (fresh multi-MB
buffers cost a page fault per 4 kB, which dominated a naive loop).

- Tensors no pack touches and whose dtype stays are never converted: their
  bytes go from θG's file into the shard kernel-side (``copy_file_range``).
- Touched tensors under the ``linear`` rule are merged in row tiles that stay
  in the CPU cache: ``tile = θ[rows].float(); tile += B[rows] @ A`` with every
  pack's LoRA factors side by side (B = [ω₁s₁B₁ | ω₂s₂B₂ …], A = [A₁; A₂ …]: one
  matmul of rank Σrᵢ, one cast in and one out, however many packs), other deltas
  materialised once and added by rows, then cast once into the pooled output
  buffer. The float32 result is exactly ``θ.float() + B @ A`` for every tile
  size (see tile_rows).
- Other rules get the whole-tensor deltas, as :mod:`lora_merge.combine` expects.
- ``--device cuda`` moves only the tensors being merged (θ's tensor and the
  factors); untouched tensors never leave the disk's page cache.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lora_merge.combine import Rule, RuleOptions
from lora_merge.task_vector import LowRankDelta, TaskVector
from lora_merge.tensors import DTYPE_NAMES, DTYPES, PlannedTensor, ShardedWriter, WeightSet

# Rows per tile aim at this many float32 elements (≈ 1 MB: the tile, its θ rows
# and its output rows stay in L2/L3 across the cast, the matmul and the cast back).
TILE_ELEMENTS = 1 << 18
# MKL picks another kernel (another rounding) for matmuls of fewer than 8 rows,
# so tiles are multiples of this and the last tile absorbs the remainder.
TILE_QUANTUM = 64
DEPTH = 2  # prepared tensors waiting for the writer, per worker
# Merge workers: each prepares every WORKERS-th tensor single-threaded. Small tiles under
# torch's own intra-op threads spend more time in thread hand-offs than in arithmetic
# (30× slower on a loaded 2-core machine), so the parallelism is across tensors instead.
WORKERS = max(1, min(4, os.cpu_count() or 1))
POLL_S = 0.1  # how often a blocked thread looks whether the other one failed

Check = Callable[[str, torch.Tensor], None]


@dataclass
class Prepared:
    """One output tensor ready to write: bytes in a pool buffer, or a span of θG's file."""

    index: int
    name: str
    data: torch.Tensor | None = None  # uint8 view into a pool buffer
    span: tuple[int, int, int] | None = None  # (fd, offset, nbytes) in θG's shard
    buffer: torch.Tensor | None = None  # give back to the pool after writing
    changed: bool = False


class _Stopped(Exception):
    """The other side of the pipeline failed; unwind quietly."""


class BufferPool:
    """A few byte buffers of the largest size needed, handed out and given back."""

    def __init__(self, count: int, nbytes: int, stop: threading.Event):
        self.stop = stop
        self.free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(count if nbytes else 0):
            self.free.put(torch.empty(nbytes, dtype=torch.uint8))

    def take(self) -> torch.Tensor:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return self.free.get(timeout=POLL_S)
            except queue.Empty:
                continue

    def give(self, buf: torch.Tensor) -> None:
        self.free.put(buf)


def tile_rows(rows: int, cols: int) -> list[tuple[int, int]]:
    """Row ranges covering ``rows``: multiples of TILE_QUANTUM, the last one absorbing the remainder."""
    per = max(TILE_QUANTUM, (TILE_ELEMENTS // max(cols, 1)) // TILE_QUANTUM * TILE_QUANTUM)
    if rows < 2 * per:
        return [(0, rows)]
    starts = list(range(0, rows - rows % per - per, per))
    return [(s, s + per) for s in starts] + [(starts[-1] + per if starts else 0, rows)]


def tile_elements(shape: tuple[int, ...]) -> int:
    """Float32 elements the largest tile of a tensor of this shape needs."""
    if len(shape) != 2:
        return 0
    return max(r1 - r0 for r0, r1 in tile_rows(*shape)) * shape[1]


def _terms(vectors: Sequence[TaskVector], name: str, device: torch.device):
    """The terms to add to θ's tensor: ('lowrank', (B, A)) or ('dense', ω·Δ).

    Every LoRA term is folded into one pair, B = [ω₁s₁B₁ | ω₂s₂B₂ | …] and A = [A₁; A₂; …],
    so that Σ ωᵢsᵢBᵢAᵢ = B @ A is one matmul per tile: each tile of θ is then cast in,
    added to and cast out once however many packs there are.
    """
    bs, as_, dense = [], [], []
    for v in vectors:
        for coef, delta in v.terms.get(name, ()):
            if isinstance(delta, LowRankDelta) and not delta.transpose:
                b, a = delta.factors(device)
                bs.append(b * coef if coef != 1.0 else b)
                as_.append(a)
            else:
                t = delta.materialize(device)
                dense.append(t * coef if coef != 1.0 else t)
    out = []
    if bs:
        out.append(("lowrank", (bs[0], as_[0]) if len(bs) == 1 else (torch.cat(bs, 1), torch.cat(as_, 0))))
    return out + [("dense", t) for t in dense]


def merge_linear(theta: torch.Tensor, terms, out: torch.Tensor, device: torch.device, scratch: torch.Tensor) -> None:
    """out ← cast(θ.float() + Σ terms), in row tiles (CPU) or whole (GPU, 1-D tensors).

    ``scratch`` is a reused float32 buffer of at least :func:`tile_elements` elements.
    """
    if device.type != "cpu" or theta.dim() != 2:
        acc = theta.to(device=device, dtype=torch.float32, copy=True)  # never a view of the read-only map
        for kind, t in terms:
            acc.addmm_(t[0], t[1]) if kind == "lowrank" else acc.add_(t)
        out.copy_(acc)
        return
    rows, cols = theta.shape
    for r0, r1 in tile_rows(rows, cols):
        acc = scratch[: (r1 - r0) * cols].view(r1 - r0, cols)
        acc.copy_(theta[r0:r1])
        for kind, t in terms:
            if kind == "lowrank":
                acc.addmm_(t[0][r0:r1], t[1])
            else:
                acc.add_(t[r0:r1])
        out[r0:r1].copy_(acc)


class _Producer(threading.Thread):
    def __init__(self, plan, sources, general, vectors, rule, opts, device, linear, pool, ready, stop, check,
                 worker: int = 0, workers: int = 1):
        super().__init__(name="fold-merge", daemon=True)
        self.worker, self.workers = worker, workers
        self.plan, self.sources, self.general, self.vectors = plan, sources, general, vectors
        self.rule, self.opts, self.device, self.linear = rule, opts, device, linear
        self.pool, self.ready, self.stop, self.check = pool, ready, stop, check
        self.fds: dict[str, int] = {}
        self.scratch = torch.empty(0, dtype=torch.float32)

    def run(self) -> None:
        try:
            for i in range(self.worker, len(self.plan), self.workers):
                self._put(self.prepare(i, self.plan[i]))
        except _Stopped:
            return
        except BaseException as e:  # handed to the writer thread, which raises it
            self._put_error(e)

    def _put(self, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.ready.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _put_error(self, e: BaseException) -> None:
        try:
            self._put(e)
        except _Stopped:
            pass

    def prepare(self, i: int, p: PlannedTensor) -> Prepared:
        src = self.sources[p.name]
        info = self.general.info(src)
        touched = any(p.name in v for v in self.vectors)
        if not touched and DTYPES[info.dtype] == p.dtype:
            return Prepared(i, p.name, span=(self._fd(src), info.start, info.nbytes))
        theta = self.general.get(src)
        buf = self.pool.take()
        out = buf[: p.nbytes].view(p.dtype).view(p.shape)
        if not touched:
            out.copy_(theta)
        elif self.linear:
            if self.device.type == "cpu" and tile_elements(p.shape) > self.scratch.numel():
                self.scratch = torch.empty(tile_elements(p.shape), dtype=torch.float32)
            merge_linear(theta, _terms(self.vectors, p.name, self.device), out, self.device, self.scratch)
        else:
            deltas = [v.delta(p.name, self.device) for v in self.vectors if p.name in v]
            combined = self.rule(deltas, self.opts, p.name)
            out.copy_(theta.to(device=self.device, dtype=torch.float32) + combined)
        if self.check is not None:
            self.check(p.name, out)
        del theta
        self.general.files[self.general.where[src]].release(src)  # keep RSS flat in model size
        return Prepared(i, p.name, data=buf[: p.nbytes], buffer=buf, changed=touched)

    def _fd(self, name: str) -> int:
        path = str(self.general.files[self.general.where[name]].path)
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def stream_fold(
    plan: Sequence[PlannedTensor],
    sources: dict[str, str],
    general: WeightSet,
    vectors: Sequence[TaskVector],
    rule: Rule,
    opts: RuleOptions,
    device: torch.device,
    writer: ShardedWriter,
    linear: bool,
    progress: bool = False,
    check: Check | None = None,
    depth: int = DEPTH,
    workers: int | None = None,
) -> int:
    """Write every planned tensor of θG + rule(vectors) through ``writer``; return how many changed.

    Any failure on either side stops both and is raised here; the caller removes
    the partial output.
    """
    needs_buffer = [p.nbytes for p in plan
                    if any(p.name in v for v in vectors) or DTYPE_NAMES.get(p.dtype) != general.info(sources[p.name]).dtype]
    workers = workers or (WORKERS if device.type == "cpu" else 1)
    stop = threading.Event()
    pool = BufferPool(workers * (depth + 1) + 1, max(needs_buffer, default=0), stop)
    queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in range(workers)]
    producers = [_Producer(plan, sources, general, vectors, rule, opts, device, linear, pool, queues[k], stop, check,
                           k, workers) for k in range(workers)]
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    changed = 0
    for producer in producers:
        producer.start()
    try:
        for i in tqdm(range(len(plan)), desc="fold", unit="tensor", disable=not progress):
            item = _next(queues[i % workers], producers[i % workers])
            if isinstance(item, BaseException):
                raise item
            if item.span is not None:
                fd, offset, nbytes = item.span
                writer.copy_span(item.name, fd, offset, nbytes)
            else:
                writer.write_bytes(item.name, item.data)
                pool.give(item.buffer)
            changed += item.changed
    finally:
        stop.set()
        for producer in producers:
            producer.join()
            producer.close()
        torch.set_num_threads(threads)
    return changed


def _next(ready: queue.Queue, producer: _Producer):
    while True:
        try:
            return ready.get(timeout=POLL_S)
        except queue.Empty:
            if not producer.is_alive() and ready.empty():
                raise RuntimeError("the fold's merge thread stopped without a result") from None
