"""Output shards in which every tensor has its place before any byte is written.

The safetensors layout is fixed by the tensors' names, dtypes and shapes alone,
so :class:`PlacedWriter` writes every shard's header first and then lets any
thread write any tensor's bytes straight to their offset (``pwrite``), in any
order and in pieces: the fold's merge workers write their own tiles, with no
hand-off to a single writer thread (that thread was the fold's bottleneck:
docs/benchmarks.md, "Profiled first: where a fold's time goes").
:meth:`finish` refuses to call a file complete unless every planned byte arrived.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from lora_merge.io.shards import (
    WRITE_CHUNK,
    PlannedTensor,
    drop_written,
    header_bytes,
    plan_shards,
    shard_names,
    start_writeback,
    write_index,
)

DROP_LAG = 4  # tensors whose writeback may still run before done() waits for the oldest and drops its pages


@dataclass(frozen=True)
class Place:
    """Where one tensor's bytes go: shard ``shard``, bytes [offset, offset + nbytes)."""

    shard: int
    offset: int
    nbytes: int


class PlacedWriter:
    """Sharded safetensors files written by position, from several threads at once.

    Each tensor must be written by one thread at a time (different tensors may be
    written concurrently). Call :meth:`open`, then :meth:`write_at` / :meth:`copy_from`
    until every tensor is complete, then :meth:`finish`; :meth:`abort` on failure.
    """

    def __init__(self, folder: Path, plan: list[PlannedTensor], max_shard_bytes: int,
                 metadata: dict[str, str] | None = None, fsync: bool = True):
        self.folder = Path(folder)
        self.shards = plan_shards(plan, max_shard_bytes)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.names = shard_names(len(self.shards))
        self.headers = [header_bytes(s, self.metadata) for s in self.shards]
        self.places: dict[str, Place] = {}
        for i, shard in enumerate(self.shards):
            at = len(self.headers[i])
            for t in shard:
                self.places[t.name] = Place(i, at, t.nbytes)
                at += t.nbytes
        self.fsync = fsync  # durable shards before the caller renames the folder into place
        self._fds: list[int] = []
        self._arrived = dict.fromkeys(self.places, 0)  # bytes written per tensor (one writer per tensor)
        self._left = [len(s) for s in self.shards]  # tensors of each shard not yet done()
        self._synced: set[int] = set()  # shards already flushed by done()
        self._in_flight: deque[tuple[int, int, int]] = deque()  # (fd, offset, bytes) handed to the disk by done()

    @property
    def bytes_written(self) -> int:
        return sum(len(h) for h in self.headers) + sum(self._arrived.values())

    def open(self) -> None:
        """Create every shard file and write its header."""
        for name, head in zip(self.names, self.headers, strict=True):
            fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            self._pwrite_all(fd, memoryview(head), 0)

    def write_at(self, name: str, at: int, data: memoryview) -> None:
        """Write ``data`` as bytes [at, at + len) of tensor ``name``."""
        place = self.places[name]
        data = data.cast("B")
        if at < 0 or at + data.nbytes > place.nbytes:
            raise RuntimeError(f"write outside tensor {name!r}: bytes {at}..{at + data.nbytes} of {place.nbytes}")
        self._pwrite_all(self._fds[place.shard], data, place.offset + at)
        self._arrived[name] += data.nbytes

    def copy_from(self, name: str, fd: int, offset: int) -> None:
        """Write all of tensor ``name`` from file ``fd`` at ``offset``, kernel-side when the filesystem can."""
        place = self.places[name]
        dst, done = self._fds[place.shard], 0
        try:
            while done < place.nbytes:
                n = os.copy_file_range(fd, dst, place.nbytes - done, offset + done, place.offset + done)
                if n == 0:
                    raise OSError(errno.EIO, f"source ended early while copying {name}")
                done += n
        except OSError as e:
            if done or e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            while done < place.nbytes:  # filesystems without copy_file_range
                chunk = os.pread(fd, min(WRITE_CHUNK, place.nbytes - done), offset + done)
                if not chunk:
                    raise OSError(errno.EIO, f"source ended early while copying {name}") from None
                self._pwrite_all(dst, memoryview(chunk), place.offset + done)
                done += len(chunk)
        self._arrived[name] += place.nbytes

    def done(self, name: str) -> None:
        """Tensor ``name`` is complete (call from one thread). When durable, start its writeback now, drop the
        pages of tensors written back a few tensors earlier, and flush its shard once the shard's last tensor is
        in, so that finish() has little left to wait for."""
        if not self.fsync:
            return
        place = self.places[name]
        start_writeback(self._fds[place.shard], place.offset, place.nbytes)
        # a few tensors later, once on disk, their pages leave the page cache (shards.drop_written says why)
        self._in_flight.append((self._fds[place.shard], place.offset, place.nbytes))
        while len(self._in_flight) > DROP_LAG:
            drop_written(*self._in_flight.popleft())
        self._left[place.shard] -= 1
        if self._left[place.shard] == 0:
            os.fsync(self._fds[place.shard])
            self._synced.add(place.shard)

    def finish(self) -> list[str]:
        """Check that every planned byte arrived, flush, close, write the index; return the file names."""
        short = [(n, got, self.places[n].nbytes) for n, got in self._arrived.items() if got != self.places[n].nbytes]
        if short:
            name, got, want = short[0]
            raise RuntimeError(f"tensor {name!r} got {got} of its {want} bytes ({len(short)} tensors incomplete)")
        for i, fd in enumerate(self._fds):
            if self.fsync and i not in self._synced:
                os.fsync(fd)
        while self._in_flight:
            drop_written(*self._in_flight.popleft())
        self.abort()
        write_index(self.folder, self.shards, self.names)
        return list(self.names)

    def abort(self) -> None:
        """Close every file (the caller removes the folder)."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._in_flight.clear()

    @staticmethod
    def _pwrite_all(fd: int, view: memoryview, at: int) -> None:
        while view.nbytes:
            n = os.pwrite(fd, view[:WRITE_CHUNK], at)
            view, at = view[n:], at + n
