"""Hostile safetensors and pickles: refused with the toolkit's own error, never unpickled, nothing allocated."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.io.tensors import MAX_HEADER_BYTES, SafetensorsFile, read_header
from lora_merge.pack.skillpack import load_manifest, write_manifest
from lora_merge.pico import make_lora_pack, pico_model, save_model


def raw_file(path: Path, header: bytes, data: bytes = b"", claimed: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if claimed is None else claimed) + header + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_a_valid_file_reads_back_what_safetensors_wrote(tmp_path):
    # the oracle: safetensors' own writer
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    save_file({"t": t, "u": torch.ones(3, dtype=torch.bfloat16)}, tmp_path / "ok.safetensors")
    f = SafetensorsFile(tmp_path / "ok.safetensors")
    assert torch.equal(f.get("t"), t) and f.get("u").dtype == torch.bfloat16


@pytest.mark.parametrize("case, header, data, claimed, needle", [
    ("truncated to the length prefix", None, b"", None, "not a safetensors file"),
    ("header longer than the file", b"{}", b"", 10_000, "truncated or not a safetensors file"),
    ("oversized header claim", b"{}", b"", 2**62, "claims"),
    ("header just over the cap", b"{}", b"", MAX_HEADER_BYTES + 1, "claims"),
    ("not JSON", b"\x00\xff garbage", b"", None, "not valid JSON"),
    ("JSON but not an object", b"[1, 2]", b"", None, "not a JSON object"),
    ("nesting bomb", b"[" * 50_000 + b"]" * 50_000, b"", None, "not valid JSON"),
    ("offsets past the end", json.dumps({"t": entry(offsets=(0, 8))}).encode(), b"\0" * 4, None, "lie outside"),
    ("size disagrees with shape", json.dumps({"t": entry(shape=(3,))}).encode(), b"\0" * 8, None, "needs 12 bytes"),
    ("overlapping tensors", json.dumps({"a": entry(), "b": entry(offsets=(4, 12))}).encode(), b"\0" * 12, None, "overlap"),
    ("unknown dtype", json.dumps({"t": entry(dtype="F8_E9")}).encode(), b"\0" * 8, None, "unsupported dtype"),
    ("unhashable dtype", json.dumps({"t": entry(dtype=[])}).encode(), b"\0" * 8, None, "unsupported dtype"),
    ("negative shape", json.dumps({"t": entry(shape=(-2,))}).encode(), b"\0" * 8, None, "bad shape"),
    ("huge shape", json.dumps({"t": entry(shape=(2**40, 2**40))}).encode(), b"\0" * 8, None, "needs"),
    ("bad metadata", json.dumps({"__metadata__": {"a": 1}}).encode(), b"", None, "metadata"),
])
def test_corrupt_truncated_and_oversized_headers(tmp_path, case, header, data, claimed, needle):
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(b"\x01\x02\x03")
    else:
        raw_file(path, header, data, claimed)
    with pytest.raises(LoraMergeError, match=needle):
        read_header(path)


def test_a_real_file_cut_short_is_refused(tmp_path):
    save_file({"t": torch.ones(64, 64)}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoraMergeError, match="lie outside"):
        read_header(tmp_path / "cut.safetensors")


class _Detonator:
    """Unpickling this would create a marker file: proof that nothing was unpickled when it is absent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def pack_world(tmp_path):
    model = pico_model("llama")
    base_dir = save_model(model, tmp_path / "base")
    pack = make_lora_pack(model, base_dir, tmp_path / "adapters" / "skill", "skill", seed=2)
    return tmp_path, base_dir, pack


def test_pickle_posing_as_the_adapter_is_refused_and_never_unpickled(pack_world):
    tmp, base_dir, pack = pack_world
    marker = tmp / "EXECUTED"
    (pack / "adapter_model.safetensors").write_bytes(pickle.dumps({"w": _Detonator(marker)}))
    write_manifest(pack, load_manifest(pack / "skill.json"))  # hashes match: only the format is wrong
    with pytest.raises(LoraMergeError, match="adapter_model.safetensors: (corrupt|not a safetensors)"):
        fold(FoldRequest(general=base_dir, packs=[str(pack)], out=tmp / "out", weights=[1.0], progress=False))
    assert not marker.exists() and not (tmp / "out").exists()


def test_pickled_adapter_bin_is_refused_with_a_fix(pack_world):
    tmp, base_dir, pack = pack_world
    marker = tmp / "EXECUTED"
    (pack / "adapter_model.safetensors").unlink()
    (pack / "skill.json").unlink()
    (pack / "adapter_model.bin").write_bytes(pickle.dumps(_Detonator(marker)))
    with pytest.raises(LoraMergeError, match="pickle.*never unpickles"):
        fold(FoldRequest(general=base_dir, packs=[str(pack)], out=tmp / "out", weights=[1.0], progress=False))
    assert not marker.exists()


def test_truncated_adapter_in_a_pack_fails_on_load_not_later(pack_world):
    tmp, base_dir, pack = pack_world
    weights = pack / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    write_manifest(pack, load_manifest(pack / "skill.json"))
    with pytest.raises(LoraMergeError, match="lie outside"):
        fold(FoldRequest(general=base_dir, packs=[str(pack)], out=tmp / "out", weights=[1.0], progress=False))
    assert not (tmp / "out").exists()
