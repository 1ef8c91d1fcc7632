"""The fold's pipeline: θG's tensors flow read → merge → write in bounded memory, on every core.

Every output tensor has a known place in the output shards before the fold
starts (:class:`lora_merge.io.placed.PlacedWriter`), so each merge worker takes the
next tensor, merges it and writes it to its place itself; nothing is handed to a
single writer thread (one thread copying every output byte into the page cache
was the fold's bottleneck: docs/benchmarks.md, "Profiled first: where a fold's time goes").

- Tensors no pack touches and whose dtype stays are never converted: their
  bytes go from θG's file into the shard kernel-side (``copy_file_range``).
- Touched tensors under the ``linear`` rule are merged in row tiles that stay
  in the CPU cache: ``tile = θ[rows].float(); tile += B[rows] @ A`` with every
  pack's LoRA factors side by side (B = [ω₁s₁B₁ | ω₂s₂B₂ …], A = [A₁; A₂ …]: one
  matmul of rank Σrᵢ, one cast in and one out, however many packs), other deltas
  materialised once and added by rows, then cast into a tile-sized output
  buffer that is written while it is still in cache. The float32 result is
  exactly ``θ.float() + B @ A`` for every tile size (see tile_rows).
- Touched matrices under the pruning rules (ties, dare_*, magnitude_prune) go
  through the same row tiles with :mod:`lora_merge.fold.tiled_rules`: each pack's
  rows are recomputed from its factors on every pass (thresholds, masks, the
  merge), so no pack's delta is ever held whole.
- Everything else (1-D tensors, other devices) gets the whole-tensor deltas, as
  :mod:`lora_merge.rules.combine` expects, merged into a per-worker buffer that is
  reused across tensors.
- ``--device cuda`` moves only the tensors being merged (θ's tensor and the
  factors); untouched tensors never leave the disk's page cache.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence

import torch

from lora_merge.core import console
from lora_merge.fold import tiled_rules
from lora_merge.io.placed import PlacedWriter
from lora_merge.io.shards import PlannedTensor
from lora_merge.io.tensors import DTYPES, WeightSet
from lora_merge.pack.task_vector import LowRankDelta, TaskVector
from lora_merge.rules.combine import Rule, RuleOptions, streams_as_sum

# Rows per tile aim at this many float32 elements (≈ 1 MB: the tile, its θ rows
# and its output rows stay in L2/L3 across the cast, the matmul, the cast back and the write).
TILE_ELEMENTS = 1 << 18
# MKL picks another kernel (another rounding) for matmuls of fewer than 8 rows,
# so tiles are multiples of this and the last tile absorbs the remainder.
TILE_QUANTUM = 64
# Merge workers, each single-threaded. Small tiles under torch's own intra-op threads spend
# more time in thread hand-offs than in arithmetic, worst on a loaded machine (docs/benchmarks.md,
# "Figures the code cites"), so the parallelism is across tensors instead.
WORKERS = max(1, min(4, os.cpu_count() or 1))
POLL_S = 0.1  # how often the waiting thread looks whether a worker died

Check = Callable[[str, torch.Tensor], None]


class _Stopped(Exception):
    """Another worker failed; unwind quietly."""


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


def merge_terms(vectors: Sequence[TaskVector], name: str, device: torch.device):
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


def merged_tiles(theta: torch.Tensor, terms, scratch: torch.Tensor, out: torch.Tensor
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, those rows of cast(θ.float() + Σ terms)) for each row tile of a 2-D θ, on the CPU.

    ``scratch`` is a float32 buffer of at least :func:`tile_elements` elements. ``out`` is either a
    1-D buffer of the output dtype, as large, that every tile reuses from its start (each yielded
    view is then valid until the next), or a tensor of θ's shape whose rows the tiles fill.
    """
    rows, cols = theta.shape
    for r0, r1 in tile_rows(rows, cols):
        acc = scratch[: (r1 - r0) * cols].view(r1 - r0, cols)
        acc.copy_(theta[r0:r1])
        for kind, t in terms:
            if kind == "lowrank":
                acc.addmm_(t[0][r0:r1], t[1])
            else:
                acc.add_(t[r0:r1])
        dst = out[r0:r1] if out.dim() == 2 else out[: (r1 - r0) * cols].view(r1 - r0, cols)
        dst.copy_(acc)
        yield r0, dst


def merge_linear(theta: torch.Tensor, terms, out: torch.Tensor, device: torch.device, scratch: torch.Tensor) -> None:
    """out ← cast(θ.float() + Σ terms) for a whole tensor: by row tiles on the CPU, at once elsewhere."""
    if device.type == "cpu" and theta.dim() == 2:
        for _ in merged_tiles(theta, terms, scratch, out):
            pass
        return
    acc = theta.to(device=device, dtype=torch.float32, copy=True)  # never a view of the read-only map
    for kind, t in terms:
        acc.addmm_(t[0], t[1]) if kind == "lowrank" else acc.add_(t)
    out.copy_(acc)


class _Job:
    """What every worker of one fold shares: the plan, its inputs, the writer, and how they coordinate."""

    def __init__(self, plan, sources, general, vectors, rule, method, opts, device, writer, check):
        self.plan, self.sources, self.general, self.vectors = plan, sources, general, vectors
        self.rule, self.method, self.opts, self.device = rule, method, opts, device
        self.linear = streams_as_sum(method)
        # on the CPU, touched matrices go by row tiles under these rules
        self.tiled = device.type == "cpu" and (self.linear or tiled_rules.tiles_for(method))
        self.writer, self.check = writer, check
        self.next_index = itertools.count()  # next() on it is atomic under the GIL: each index goes to one worker
        self.done: queue.Queue = queue.Queue()  # (index, changed) per finished tensor, or a worker's exception
        self.stop = threading.Event()


class _Worker(threading.Thread):
    """Takes the next tensor of the plan, merges it and writes it to its place, until none is left."""

    def __init__(self, job: _Job):
        super().__init__(name="fold-merge", daemon=True)
        self.job = job
        self.fds: dict[str, int] = {}
        self.scratch = torch.empty(0, dtype=torch.float32)  # one float32 tile
        self.buffers: dict[str, torch.Tensor] = {}  # "tile": one output tile; "whole": a whole result (reused)
        self.rule_scratch = tiled_rules.Scratch()  # the pruning rules' tile buffers

    def run(self) -> None:
        job = self.job
        block_stop_signals()
        try:
            for i in job.next_index:
                if i >= len(job.plan) or job.stop.is_set():
                    return
                job.done.put((i, self.fold_one(job.plan[i])))
        except _Stopped:
            return
        except BaseException as e:  # the waiting thread raises it
            job.done.put(e)
        finally:
            for fd in self.fds.values():
                os.close(fd)

    def fold_one(self, p: PlannedTensor) -> bool:
        """Write tensor ``p`` of the output; return whether a pack changed it."""
        job = self.job
        src = job.sources[p.name]
        info = job.general.info(src)
        touched = any(p.name in v for v in job.vectors)
        if not touched and DTYPES[info.dtype] == p.dtype:
            job.writer.copy_from(p.name, self._fd(src), info.start)
        else:
            theta = job.general.get(src)
            # by tiles: the linear and pruning rules on the CPU, and dtype changes of untouched matrices (no terms;
            # on the CPU whatever the device), so that none needs a buffer the size of the tensor
            if theta.dim() == 2 and (not touched or job.tiled):
                self._write_tiles(p, theta, touched)
            else:
                self._write_whole(p, theta, touched)
            del theta
            job.general.files[job.general.where[src]].release(src)  # keep RSS flat in model size
        return touched

    def _write_tiles(self, p: PlannedTensor, theta: torch.Tensor, touched: bool) -> None:
        """Each tile is merged (or only cast), checked and written while it is in cache."""
        job, need = self.job, tile_elements(p.shape)
        tile = self._buffer("tile", need * p.dtype.itemsize)[: need * p.dtype.itemsize].view(p.dtype)
        row_bytes = p.shape[1] * p.dtype.itemsize
        if touched and not job.linear:
            terms = [v.terms[p.name] for v in job.vectors if p.name in v]
            tiles = tiled_rules.pruned_tiles(theta, terms, job.method, job.opts, p.name, tile_rows(*p.shape), tile,
                                             self.rule_scratch)
        else:
            terms = merge_terms(job.vectors, p.name, job.device) if touched else []
            if self.scratch.numel() < need:
                self.scratch = torch.empty(need, dtype=torch.float32)
            tiles = merged_tiles(theta, terms, self.scratch, tile)
        for r0, rows in tiles:
            if job.stop.is_set():
                raise _Stopped
            if job.check is not None:
                try:
                    job.check(p.name, rows)
                except Exception:  # let the check see the whole tensor, so its message counts every bad value
                    whole = torch.empty(p.shape, dtype=p.dtype)
                    self._merge_whole(p, theta, whole)
                    job.check(p.name, whole)
                    raise
            job.writer.write_at(p.name, r0 * row_bytes, memoryview(rows.view(-1).view(torch.uint8).numpy()))

    def _write_whole(self, p: PlannedTensor, theta: torch.Tensor, touched: bool) -> None:
        """Other rules, other devices and 1-D tensors: the whole result in a buffer reused across tensors."""
        job = self.job
        buf = self._buffer("whole", p.nbytes)[: p.nbytes]
        out = buf.view(p.dtype).view(p.shape)
        if not touched:
            out.copy_(theta)
        else:
            self._merge_whole(p, theta, out)
        if job.check is not None:
            job.check(p.name, out)
        job.writer.write_at(p.name, 0, memoryview(buf.numpy()))

    def _merge_whole(self, p: PlannedTensor, theta: torch.Tensor, out: torch.Tensor) -> None:
        """out ← cast(θ.float() + rule(deltas)) for the whole tensor, the rule called as combine defines it."""
        job = self.job
        if job.linear:
            merge_linear(theta, merge_terms(job.vectors, p.name, job.device), out, job.device, self.scratch)
        else:
            deltas = [v.delta(p.name, job.device) for v in job.vectors if p.name in v]
            out.copy_(theta.to(device=job.device, dtype=torch.float32) + job.rule(deltas, job.opts, p.name))

    def _buffer(self, kind: str, nbytes: int) -> torch.Tensor:
        buf = self.buffers.get(kind)
        if buf is None or buf.numel() < nbytes:
            buf = self.buffers[kind] = torch.empty(nbytes, dtype=torch.uint8)
        return buf

    def _fd(self, name: str) -> int:
        path = str(self.job.general.files[self.job.general.where[name]].path)
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]


def block_stop_signals() -> None:
    """Keep Ctrl-C (SIGINT), SIGTERM and SIGHUP away from this (non-main) thread, so the kernel hands them to the
    main thread, whose waits they then interrupt at once. Python runs signal handlers only in the main thread; one
    that landed on a worker would wait for the main thread's next poll."""
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        stops = {signal.SIGINT, signal.SIGTERM} | ({signal.SIGHUP} if hasattr(signal, "SIGHUP") else set())
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)


def stream_fold(
    plan: Sequence[PlannedTensor],
    sources: dict[str, str],
    general: WeightSet,
    vectors: Sequence[TaskVector],
    rule: Rule,
    opts: RuleOptions,
    device: torch.device,
    writer: PlacedWriter,
    method: str,
    progress: bool = False,
    check: Check | None = None,
    workers: int | None = None,
) -> int:
    """Write every planned tensor of θG + rule(vectors) to its place in ``writer``; return how many changed.

    ``method`` is the ``--method`` name ``rule`` was got by: it picks the tiled kernel on the CPU. ``writer``
    must be open. Any failure in a worker stops them all and is raised here; the caller removes the partial
    output.
    """
    job = _Job(plan, sources, general, vectors, rule, method, opts, device, writer, check)
    pool = [_Worker(job) for _ in range(workers or (WORKERS if device.type == "cpu" else 1))]
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    changed = 0
    # The bar exists before any worker writes: an interrupt (Ctrl-C, SIGTERM) that arrives mid-fold then never
    # lands inside tqdm's constructor, whose half-built object would print a traceback when collected.
    bar = console.bar(range(len(plan)), desc="fold", unit="tensor", progress=progress)
    try:
        for w in pool:
            w.start()
        for _ in bar:
            item = _next(job.done, pool)
            if isinstance(item, BaseException):
                raise item
            # when durable, start this tensor's writeback from here: the call can block on the disk's
            # queue, and this thread is otherwise idle while the workers compute
            writer.done(plan[item[0]].name)
            changed += item[1]
    finally:
        bar.close()
        job.stop.set()
        for w in pool:
            if w.ident is not None:  # started
                w.join()
        torch.set_num_threads(threads)
    return changed


def _next(done: queue.Queue, pool: list[_Worker]):
    while True:
        try:
            return done.get(timeout=POLL_S)
        except queue.Empty:
            if not any(w.is_alive() for w in pool) and done.empty():
                raise RuntimeError("the fold's merge threads stopped without a result") from None
