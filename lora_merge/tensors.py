"""Safe, lazy safetensors reading and streamed, sharded writing.

Reading: the header of every file is parsed and bounds-checked *before* any
tensor is touched (a hostile header cannot make us allocate gigabytes or read
past the end of the file); tensors are then views into a read-only memory map,
so a 7B model costs address space, not RAM. Nothing is ever unpickled.

Writing: :class:`ShardedWriter` plans every shard's header up front from the
tensors' names, dtypes and shapes, then streams tensor bytes one at a time, in
order, so peak memory is one tensor, whatever the shard size (extraction,
training, benchmark models). The fold writes through
:class:`lora_merge.placed.PlacedWriter` instead: the same layout, written by
position from several threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_merge.errors import LoraMergeError

# The largest header we accept. Real headers are a few hundred kB even for
# 70B models; anything bigger is corrupt or hostile.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
# Keep this list in sync with DTYPES: byte width of one element.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
    "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives inside a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header.

    Returns the tensors (name → :class:`TensorInfo`) and the ``__metadata__``.
    Raises :class:`LoraMergeError` for anything malformed: a truncated file, a
    header length past the end, invalid JSON, unknown dtypes, offsets outside
    the data area, overlapping tensors, or sizes that disagree with the shape.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise LoraMergeError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise LoraMergeError(
                    f"{path}: corrupt safetensors header (claims {header_len} header bytes, "
                    f"file has {size}); the file is truncated or not a safetensors file"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise LoraMergeError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # deep nesting: hostile, not a crash
        raise LoraMergeError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise LoraMergeError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    data_len = size - data_start
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoraMergeError(f"{path}: corrupt safetensors metadata (must map strings to strings)")
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        infos[name] = _tensor_info(path, name, entry, data_start, data_len)
        spans.append((infos[name].start, infos[name].end, name))
    spans.sort()
    for (_s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise LoraMergeError(f"{path}: corrupt safetensors file: tensors {n0!r} and {n1!r} overlap")
    return infos, metadata


def _tensor_info(path: Path, name: str, entry: object, data_start: int, data_len: int) -> TensorInfo:
    bad = f"{path}: corrupt safetensors entry for tensor {name!r}"
    if not isinstance(entry, dict):
        raise LoraMergeError(f"{bad} (not an object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:  # a list or dict here is unhashable
        raise LoraMergeError(f"{bad} (unsupported dtype {dtype!r})")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise LoraMergeError(f"{bad} (bad shape {shape!r})")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise LoraMergeError(f"{bad} (bad data_offsets {offsets!r})")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise LoraMergeError(f"{bad} (offsets {begin}..{end} lie outside the {data_len} data bytes)")
    numel = 1
    for s in shape:
        numel *= s
    if numel * DTYPE_SIZES[dtype] != end - begin:
        raise LoraMergeError(f"{bad} (shape {shape} of {dtype} needs {numel * DTYPE_SIZES[dtype]} bytes, has {end - begin})")
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


class SafetensorsFile:
    """One validated safetensors file, read lazily through a memory map."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tensors, self.metadata = read_header(self.path)
        self._map: mmap.mmap | None = None

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as f:
                # A zero-length map is not allowed; an empty data area has no tensors to read anyway.
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as a read-only view into the map (copy before writing to it)."""
        info = self.tensors[name]
        dtype = DTYPES[info.dtype]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        import warnings

        with warnings.catch_warnings():
            # torch warns that the buffer is not writable; we never write to it.
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(self._mapped(), dtype=dtype, count=info.numel, offset=info.start)
        return flat.view(info.shape)

    def release(self, name: str) -> None:
        """Unmap the pages of ``name`` from this process (they stay in the page cache; a later read faults them
        back in), so streaming a large model does not pile its file pages up in our resident set."""
        info = self.tensors[name]
        if self._map is None or info.nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = info.start - info.start % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, start, info.end - start)

    def close(self) -> None:
        self._map = None  # tensors viewing the map keep it alive until they go


class WeightSet:
    """Every tensor of a model folder (one file or sharded with an index), by name."""

    def __init__(self, files: dict[str, SafetensorsFile], where: dict[str, str], root: Path):
        self.files = files
        self.where = where  # tensor name → file name
        self.root = root

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "WeightSet":
        """Open the safetensors weights of a model folder, refusing pickles."""
        root = Path(folder)
        if not root.is_dir():
            raise LoraMergeError(f"{root}: no such model folder")
        index = root / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                assert isinstance(weight_map, dict)
            except (ValueError, KeyError, AssertionError, TypeError):
                raise LoraMergeError(f"{index}: not a valid safetensors index (needs a 'weight_map')") from None
            names = sorted(set(weight_map.values()))
        else:
            names = sorted(p.name for p in root.glob("*.safetensors"))
        if not names:
            pickles = [p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES]
            if pickles:
                raise LoraMergeError(
                    f"{root}: weights are stored as pickle ({', '.join(pickles)}); lora_merge reads safetensors only "
                    "and never unpickles. Convert them with transformers: "
                    "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
                )
            raise LoraMergeError(f"{root}: no safetensors weights found (expected {SINGLE_NAME} or {INDEX_NAME})")
        files: dict[str, SafetensorsFile] = {}
        where: dict[str, str] = {}
        for name in names:
            if "/" in name or name.startswith(".."):
                raise LoraMergeError(f"{index}: shard name {name!r} points outside the folder")
            path = root / name
            if not path.is_file():
                raise LoraMergeError(f"{root}: shard {name} named in the index is missing")
            files[name] = SafetensorsFile(path)
            for t in files[name].tensors:
                if t in where:
                    raise LoraMergeError(f"{root}: tensor {t!r} appears in both {where[t]} and {name}")
                where[t] = name
        return cls(files, where, root)

    def keys(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: object) -> bool:
        return name in self.where

    def info(self, name: str) -> TensorInfo:
        return self.files[self.where[name]].tensors[name]

    def get(self, name: str) -> torch.Tensor:
        try:
            return self.files[self.where[name]].get(name)
        except KeyError:
            raise LoraMergeError(f"{self.root}: has no tensor {name!r}") from None

    def metadata(self) -> dict[str, str]:
        first = next(iter(self.files.values()))
        return dict(first.metadata)

    def total_bytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.files.values())


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


def _header_bytes(shard: list[PlannedTensor], metadata: dict[str, str]) -> bytes:
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


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a range to disk now (SYNC_FILE_RANGE_WRITE); a hint only."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, nbytes, 2)


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
            _start_writeback(self._file.fileno(), self._flushed, pos - self._flushed)
            self._flushed = pos

    def _open(self, shard_i: int) -> None:
        self._close()
        self._current = shard_i
        self._file = open(self.folder / self.names[shard_i], "wb", buffering=0)
        self._flushed = 0
        head = _header_bytes(self.shards[shard_i], self.metadata)
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
