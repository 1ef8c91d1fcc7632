"""Safe, lazy safetensors reading (writing lives in :mod:`lora_merge.io.shards`).

The header of every file is parsed and bounds-checked *before* any
tensor is touched (a hostile header cannot make us allocate gigabytes or read
past the end of the file); tensors are then views into a read-only memory map,
so a 7B model costs address space, not RAM. Nothing is ever unpickled.

A :class:`WeightSet` is a model folder's tensors (one file or an indexed set
of shards) under one name space.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lora_merge.core.errors import LoraMergeError

if TYPE_CHECKING:
    import torch

# The largest header we accept. Real headers are a few hundred kB even for
# 70B models; anything bigger is corrupt or hostile.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype name → torch dtype. Built on first use (module __getattr__), so reading headers, manifests
# and pack summaries never imports torch (`pack inspect` starts in a blink).
_DTYPE_TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _dtypes() -> dict:
    """DTYPES, built (and torch imported) on first use."""
    if "DTYPES" not in globals():
        import torch

        dtypes = {k: getattr(torch, v) for k, v in _DTYPE_TORCH_NAMES.items()}
        globals().update(DTYPES=dtypes, DTYPE_NAMES={v: k for k, v in dtypes.items()})
    return globals()["DTYPES"]


def __getattr__(name: str):
    """DTYPES (name → torch dtype) and DTYPE_NAMES (torch dtype → name), built with torch's first use."""
    if name not in ("DTYPES", "DTYPE_NAMES"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _dtypes()
    return globals()[name]


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
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            header_len = _header_len(path, prefix, size)
            raw = f.read(header_len)
    except OSError as e:
        raise LoraMergeError(f"{path}: cannot read ({e.strerror})") from None
    return _parse_header(path, raw, header_len, size)


def header_of(path: Path, data: mmap.mmap | bytes) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """:func:`read_header` of a file already mapped (``data``), so the header and the tensors come from the very
    bytes a caller hashed (``path`` only names it in errors)."""
    header_len = _header_len(path, data[:8], len(data))
    return _parse_header(path, bytes(data[8:8 + header_len]), header_len, len(data))


def _header_len(path: Path, prefix: bytes, size: int) -> int:
    if len(prefix) < 8:
        raise LoraMergeError(f"{path}: not a safetensors file (only {size} bytes)")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES or header_len > size - 8:
        raise LoraMergeError(
            f"{path}: corrupt safetensors header (claims {header_len} header bytes, "
            f"file has {size}); the file is truncated or not a safetensors file"
        )
    return header_len


def _parse_header(path: Path, raw: bytes, header_len: int, size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
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
    for (_s0, e0, n0), (s1, _e1, n1) in itertools.pairwise(spans):
        if s1 < e0:
            raise LoraMergeError(f"{path}: corrupt safetensors file: tensors {n0!r} and {n1!r} overlap")
    return infos, metadata


def map_open_file(f) -> mmap.mmap | bytes:
    """A read-only map of the open file ``f`` (``b""`` when it is empty: a zero-length map is not allowed). The map
    holds the file it was made from: renaming another file into its place later changes nothing here."""
    if os.fstat(f.fileno()).st_size == 0:
        return b""
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def sha256_of(data: mmap.mmap | bytes) -> str:
    """sha256 of a mapped file, read a chunk at a time and dropped from this process's memory after each."""
    import hashlib

    h = hashlib.sha256()
    step = 1 << 22  # a multiple of the page size, as madvise wants
    view = memoryview(data)
    for start in range(0, len(data), step):
        h.update(view[start:start + step])
        if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            data.madvise(mmap.MADV_DONTNEED, start, min(step, len(data) - start))
    view.release()
    return h.hexdigest()


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

    def __init__(self, path: str | os.PathLike, mapped: mmap.mmap | bytes | None = None):
        """Open ``path``, or read ``mapped`` (the file already mapped, e.g. the bytes a pack verified: then the
        header and every tensor come from those bytes, whatever happens to ``path`` meanwhile)."""
        self.path = Path(path)
        if mapped is None:
            try:
                with open(self.path, "rb") as f:
                    mapped = map_open_file(f)
            except OSError as e:
                raise LoraMergeError(f"{self.path}: cannot read ({e.strerror})") from None
        self.tensors, self.metadata = header_of(self.path, mapped)  # from the map: one file, header and data
        self._map: mmap.mmap | bytes | None = mapped

    def _mapped(self) -> mmap.mmap | bytes:
        if self._map is None:
            raise LoraMergeError(f"{self.path}: read after it was closed")
        return self._map

    def mapped(self) -> mmap.mmap | bytes:
        """The whole file as a read-only map (raw bytes; `numerics.scan_file` reads bits from it without torch)."""
        return self._mapped()

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as a read-only view into the map (copy before writing to it)."""
        import torch

        info = self.tensors[name]
        dtype = _dtypes()[info.dtype]
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
        if not isinstance(self._map, mmap.mmap) or info.nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
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

    def elements(self, name: str, positions: list[int]) -> torch.Tensor:
        """The elements at flat ``positions`` of tensor ``name``, as float32: a gather from the memory map, so
        only the pages holding them are read (the provenance check samples a 7B model this way)."""
        import torch

        flat = self.get(name).reshape(-1)
        return flat[torch.tensor(positions, dtype=torch.long)].to(torch.float32)

    def total_bytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.files.values())
