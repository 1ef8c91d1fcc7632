"""Writing sharded safetensors: plan the shards, write headers and tensors, and the index.

:class:`ShardedWriter` plans every shard's header up front from the tensors'
names, dtypes and shapes, then streams tensor bytes one at a time, in order, so
peak memory is one tensor whatever the shard size (extraction, training,
benchmark models). The fold writes through :class:`lora_merge.io.placed.PlacedWriter`
instead: the same layout, written by position from several threads, with the
header and writeback helpers here. Reading lives in :mod:`lora_merge.io.tensors`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lora_merge.core.errors import LoraMergeError
from lora_merge.io.tensors import DTYPE_SIZES, INDEX_NAME, SINGLE_NAME

if TYPE_CHECKING:  # torch is imported where tensors are written, not to parse a --max-shard-size
    import torch


def parse_size(text: str | int) -> int:
    """'5GB' → 5_000_000_000; '500MB', '2GiB', '1024' also work."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise LoraMergeError(f"size {text!r} must be at least one byte")
        return text
    if not isinstance(text, str):
        raise LoraMergeError(f"cannot read size {text!r}: write it like 5GB, 500MB or 2GiB")
    s = text.strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    unit = next((u for u in units if s.endswith(u)), None)
    number, mult = (s[: -len(unit)], units[unit]) if unit else (s, 1)
    try:
        value = float(number)
    except ValueError:
        raise LoraMergeError(f"cannot read size {text!r}: write it like 5GB, 500MB or 2GiB") from None
    if not math.isfinite(value) or value * mult < 1:  # nan, inf, 0, -1, 0.1 B: no shard size
        raise LoraMergeError(f"size {text!r} must be a positive, finite number of bytes (like 5GB)")
    return int(value * mult)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        from lora_merge.io.tensors import DTYPE_NAMES

        n = DTYPE_SIZES[DTYPE_NAMES[self.dtype]]
        for s in self.shape:
            n *= s
        return n


def plan_shards(tensors: Iterable[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Group tensors, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    used = 0
    for t in tensors:
        if shards[-1] and used + t.nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(t)
        used += t.nbytes
    return [s for s in shards if s] or [[]]


def shard_names(count: int) -> list[str]:
    """The Hugging Face file names of ``count`` shards (one file: model.safetensors)."""
    return [SINGLE_NAME] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_index(folder: Path, shards: list[list[PlannedTensor]], names: list[str]) -> None:
    """Write the index that maps each tensor to its shard, when there is more than one shard."""
    if len(names) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for s in shards for t in s)},
            "weight_map": {t.name: names[i] for i, s in enumerate(shards) for t in s},
        }
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))


def header_bytes(shard: list[PlannedTensor], metadata: dict[str, str]) -> bytes:
    from lora_merge.io.tensors import DTYPE_NAMES

    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in shard:
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data area to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


WRITE_CHUNK = 64 * 1024 * 1024  # one write() call; the kernel copies it straight into the page cache
WRITEBACK_CHUNK = 64 * 1024 * 1024  # when durable, hand the disk this much at a time while we go on


def _libc_sync_file_range():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE = _libc_sync_file_range()


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a range to disk now (SYNC_FILE_RANGE_WRITE); a hint only."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, nbytes, 2)


def drop_written(fd: int, offset: int, nbytes: int) -> None:
    """Wait until a range is on disk, then drop its pages from the page cache (a hint; no-op where unsupported).

    A durable write of a model as large as the RAM otherwise leaves it full of written pages, which the kernel
    has to reclaim under pressure while the writer allocates new ones (the 7B fold in docs/benchmarks.md).
    """
    if _SYNC_FILE_RANGE is None:
        return
    _SYNC_FILE_RANGE(fd, offset, nbytes, 1 | 2 | 4)  # WAIT_BEFORE | WRITE | WAIT_AFTER
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)


class ShardedWriter:
    """Streams tensors, in a planned order, into sharded safetensors files.

    Use :meth:`write` for each planned tensor in order, then :meth:`finish`,
    which writes the index (when there is more than one shard). The folder is
    expected to be a temporary one that the caller renames into place.
    """

    def __init__(self, folder: Path, plan: list[PlannedTensor], max_shard_bytes: int, metadata: dict[str, str] | None = None,
                 fsync: bool = True):
        self.folder = folder
        self.shards = plan_shards(plan, max_shard_bytes)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.names = shard_names(len(self.shards))
        self._order: Iterator[tuple[int, PlannedTensor]] = ((i, t) for i, s in enumerate(self.shards) for t in s)
        self._current = -1
        self._file = None
        self.fsync = fsync  # durable shards before the caller renames the folder into place
        self._flushed = 0  # bytes of the current shard already handed to the disk
        self.bytes_written = 0

    def _next_planned(self, name: str, shape: tuple[int, ...] | None, dtype: torch.dtype | None, nbytes: int) -> PlannedTensor:
        """The next planned tensor, checked against what the caller writes (raw writes check the byte count)."""
        try:
            shard_i, planned = next(self._order)
        except StopIteration:
            raise RuntimeError(f"tensor {name!r} was not planned") from None
        if planned.name != name or (shape is not None and shape != planned.shape) \
                or (dtype is not None and dtype != planned.dtype) or nbytes != planned.nbytes:
            raise RuntimeError(f"write order broken: expected {planned}, got {name} {shape} {dtype} ({nbytes} bytes)")
        if shard_i != self._current:
            self._open(shard_i)
        return planned

    def write(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        self._next_planned(name, tuple(tensor.shape), tensor.dtype, nbytes)
        if tensor.numel():
            import torch

            data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
            self._write_all(memoryview(data))
        self.bytes_written += nbytes

    def _write_all(self, view: memoryview) -> None:
        view = view.cast("B")
        fd = self._file.fileno()
        while view.nbytes:
            n = os.write(fd, view[:WRITE_CHUNK])
            view = view[n:]
            self._kick(n)

    def _kick(self, n: int) -> None:
        """Start writeback of what is written so far, so the final fsync does not wait for all of it."""
        if not self.fsync:
            return
        pos = self._file.tell()
        if pos - self._flushed >= WRITEBACK_CHUNK:
            start_writeback(self._file.fileno(), self._flushed, pos - self._flushed)
            self._flushed = pos

    def _open(self, shard_i: int) -> None:
        self._close()
        self._current = shard_i
        self._file = open(self.folder / self.names[shard_i], "wb", buffering=0)
        self._flushed = 0
        head = header_bytes(self.shards[shard_i], self.metadata)
        self._write_all(memoryview(head))
        self.bytes_written += len(head)

    def _close(self) -> None:
        if self._file is not None:
            if self.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def finish(self) -> list[str]:
        """Close the last shard, write the index if sharded; return the file names."""
        leftover = next(self._order, None)
        if leftover is not None:
            raise RuntimeError(f"tensor {leftover[1].name!r} was planned but never written")
        for i in range(len(self.shards)):  # shards with no tensors written yet (an empty model)
            if not (self.folder / self.names[i]).exists():
                self._open(i)
        self._close()
        write_index(self.folder, self.shards, self.names)
        return list(self.names)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a small dict of tensors as one safetensors file (packs, test fixtures)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
