"""PlacedWriter: tensors written by position, in any order and from several threads, read back by safetensors itself."""

from __future__ import annotations

import errno
import json
import os
import threading

import pytest
import torch
from safetensors.torch import load_file

import lora_merge.io.placed as placed_module
from lora_merge.io.placed import PlacedWriter
from lora_merge.io.shards import PlannedTensor, save_tensors
from lora_merge.io.tensors import INDEX_NAME


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(40, 24, generator=g).bfloat16(),
        "b.bias": torch.randn(7, generator=g),
        "c.ids": torch.arange(13, dtype=torch.int64),
        "d.empty": torch.empty(0, 5, dtype=torch.float16),
        "e.weight": torch.randn(33, 10, generator=g).half(),
    }


def plan_of(ts: dict[str, torch.Tensor]) -> list[PlannedTensor]:
    return [PlannedTensor(n, t.dtype, tuple(t.shape)) for n, t in ts.items()]


def as_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


@pytest.mark.parametrize("shard_bytes", [1 << 30, 2000])  # one file, or several with an index
def test_any_order_from_two_threads_reads_back_with_safetensors(tmp_path, shard_bytes):
    ts = tensors()
    writer = PlacedWriter(tmp_path, plan_of(ts), shard_bytes, {"note": "test"}, fsync=True)
    writer.open()
    names = list(ts)[::-1]  # the reverse of the file order

    def write(part: list[str]) -> None:
        for n in part:
            data = as_bytes(ts[n])
            half = data.nbytes // 2 // 3 * 3  # in two pieces, the second one first, split mid-element
            writer.write_at(n, half, data[half:])
            writer.write_at(n, 0, data[:half])

    threads = [threading.Thread(target=write, args=(names[k::2],)) for k in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for n in names:
        writer.done(n)
    files = writer.finish()
    assert writer.bytes_written == sum((tmp_path / f).stat().st_size for f in files)
    back = {}
    for f in files:
        back |= load_file(str(tmp_path / f))
    assert back.keys() == ts.keys()
    for n, t in ts.items():
        assert back[n].dtype == t.dtype and torch.equal(back[n], t), n
    if len(files) > 1:
        index = json.loads((tmp_path / INDEX_NAME).read_text())
        assert set(index["weight_map"].values()) == set(files)
        assert all(n in load_file(str(tmp_path / f)) for n, f in index["weight_map"].items())


def test_durable_shards_are_flushed_once_each_as_soon_as_complete(tmp_path, monkeypatch):
    ts = tensors()
    flushed: list[int] = []
    real_fsync = placed_module.os.fsync

    class CountingOs:
        def fsync(self, fd):
            flushed.append(fd)
            real_fsync(fd)

        def __getattr__(self, name):
            return getattr(os, name)

    monkeypatch.setattr(placed_module, "os", CountingOs())
    writer = PlacedWriter(tmp_path, plan_of(ts), 2000, fsync=True)
    writer.open()
    assert len(writer.shards) == 2
    first = [t.name for t in writer.shards[0]]
    for n in first:
        writer.write_at(n, 0, as_bytes(ts[n]))
        writer.done(n)
    assert len(flushed) == 1  # the first shard, before any other tensor was written
    for n in ts.keys() - set(first):
        writer.write_at(n, 0, as_bytes(ts[n]))
    writer.finish()  # done() was not called for these: finish flushes their shards
    assert len(flushed) == len(writer.shards)


@pytest.mark.parametrize("fsync", [True, False])
def test_durable_writes_leave_the_page_cache_once_on_disk(tmp_path, monkeypatch, fsync):
    """Durable: each done() tensor's range is waited for and dropped (DROP_LAG tensors later, the rest at finish),
    each exactly once and only after its bytes arrived, and what was written still reads back. Not durable:
    nothing is dropped (the caller chose the page cache's speed)."""
    ts = tensors()
    dropped: list[tuple[int, int]] = []
    writer = PlacedWriter(tmp_path, plan_of(ts), 1 << 30, fsync=fsync)

    def record(fd, offset, nbytes):
        name = next(n for n, p in writer.places.items() if p.offset == offset and p.nbytes == nbytes)
        assert writer._arrived[name] == nbytes  # whole before it is dropped
        dropped.append((offset, nbytes))

    monkeypatch.setattr(placed_module, "drop_written", record)
    writer.open()
    names = list(ts)
    for i, n in enumerate(names):
        writer.write_at(n, 0, as_bytes(ts[n]))
        writer.done(n)
        if fsync:  # the oldest beyond the lag are dropped as later tensors complete
            assert len(dropped) == max(0, i + 1 - placed_module.DROP_LAG)
    writer.finish()
    expected = sorted((writer.places[n].offset, writer.places[n].nbytes) for n in names) if fsync else []
    assert sorted(dropped) == expected
    back = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(back[n], ts[n]) for n in ts)


def test_same_bytes_as_safetensors_own_writer_reads(tmp_path):
    """Our header and layout are valid safetensors: a file saved by safetensors and ours hold the same tensors."""
    ts = tensors()
    save_tensors(tmp_path / "theirs.safetensors", ts)
    writer = PlacedWriter(tmp_path / "ours", plan_of(ts), 1 << 30, fsync=False)
    (tmp_path / "ours").mkdir()
    writer.open()
    for n, t in ts.items():
        writer.write_at(n, 0, as_bytes(t))
    (name,) = writer.finish()
    ours, theirs = load_file(str(tmp_path / "ours" / name)), load_file(str(tmp_path / "theirs.safetensors"))
    assert all(torch.equal(ours[n], theirs[n]) for n in ts)


def test_finish_refuses_a_tensor_that_did_not_arrive_whole(tmp_path):
    ts = tensors()
    writer = PlacedWriter(tmp_path, plan_of(ts), 1 << 30, fsync=False)
    writer.open()
    for n, t in ts.items():
        data = as_bytes(t)
        writer.write_at(n, 0, data[:-2] if n == "b.bias" else data)
    with pytest.raises(RuntimeError, match=r"'b.bias' got 26 of its 28 bytes"):
        writer.finish()
    writer.abort()


def test_a_write_past_the_tensor_is_refused(tmp_path):
    ts = tensors()
    writer = PlacedWriter(tmp_path, plan_of(ts), 1 << 30, fsync=False)
    writer.open()
    with pytest.raises(RuntimeError, match="write outside tensor 'b.bias'"):
        writer.write_at("b.bias", 4, as_bytes(ts["b.bias"]))  # would spill into the next tensor
    writer.abort()


class NoCopyFileRange:
    """``os`` of a filesystem without copy_file_range (it fails as on a cross-device copy)."""

    def __init__(self, real):
        self.real, self.tried = real, 0

    def copy_file_range(self, *args, **kw):
        self.tried += 1
        raise OSError(errno.EXDEV, "cross-device")

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copy_from_another_file(tmp_path, monkeypatch, kernel_copy):
    ts = tensors()
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 11 + bytes(as_bytes(ts["a.weight"])))
    if not kernel_copy:
        fake = NoCopyFileRange(placed_module.os)
        monkeypatch.setattr(placed_module, "os", fake)
    (tmp_path / "out").mkdir()
    writer = PlacedWriter(tmp_path / "out", plan_of(ts), 1 << 30, fsync=False)
    writer.open()
    with open(source, "rb") as f:
        for n, t in ts.items():
            if n == "a.weight":
                writer.copy_from(n, f.fileno(), 11)
            else:
                writer.write_at(n, 0, as_bytes(t))
    (name,) = writer.finish()
    assert torch.equal(load_file(str(tmp_path / "out" / name))["a.weight"], ts["a.weight"])
    assert kernel_copy or fake.tried == 1


def test_copy_from_a_source_that_ends_early(tmp_path):
    ts = tensors()
    source = tmp_path / "short.bin"
    source.write_bytes(bytes(as_bytes(ts["a.weight"]))[:100])
    writer = PlacedWriter(tmp_path, plan_of(ts), 1 << 30, fsync=False)
    writer.open()
    with open(source, "rb") as f, pytest.raises(OSError, match="source ended early while copying a.weight"):
        writer.copy_from("a.weight", f.fileno(), 0)
    writer.abort()
