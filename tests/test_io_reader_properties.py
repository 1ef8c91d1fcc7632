"""Property tests: random bytes and random JSON never crash the readers with anything but LoraMergeError."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_merge.core.errors import LoraMergeError
from lora_merge.io.numerics import all_finite
from lora_merge.io.tensors import DTYPE_SIZES, SafetensorsFile, read_header
from lora_merge.pack.skillpack import Manifest, load_manifest, load_pack

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_DIR = Path(tempfile.mkdtemp(prefix="lora_merge_props-"))


def _file(name: str, data: bytes) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


@SETTINGS
@given(st.binary(max_size=512))
def test_header_reader_on_random_bytes(data):
    try:
        read_header(_file("random.safetensors", data))
    except LoraMergeError:
        pass


entries = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(sorted(DTYPE_SIZES)) | json_values,
    "shape": st.lists(st.integers(-2, 6), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-4, 80), min_size=2, max_size=2) | json_values,
})


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), entries | json_values, max_size=4), st.integers(0, 80))
def test_header_reader_on_near_valid_headers(header, data_len):
    """Headers shaped like real ones, with random dtypes, shapes and offsets: accepted ones read back safely."""
    raw = json.dumps(header).encode()
    path = _file("near.safetensors", struct.pack("<Q", len(raw)) + raw + bytes(data_len))
    try:
        infos, _ = read_header(path)
    except LoraMergeError:
        return
    f = SafetensorsFile(path)
    for name, info in infos.items():  # whatever passed validation must be readable within the file
        assert info.end <= path.stat().st_size
        assert tuple(f.get(name).shape) == info.shape


@SETTINGS
@given(json_values)
def test_manifest_loader_on_random_json(value):
    path = _file("skill.json", json.dumps(value).encode())
    try:
        m = load_manifest(path)
    except LoraMergeError:
        return
    assert isinstance(m, Manifest)


@SETTINGS
@given(st.fixed_dictionaries({"name": st.text(max_size=5), "kind": st.sampled_from(["lora", "dense", "x"])},
                             optional={"data": json_values, "files": json_values, "base_model": json_values,
                                       "training": json_values, "evaluation": json_values,
                                       "format_version": json_values}))
def test_manifest_loader_on_near_valid_manifests(value):
    path = _file("skill.json", json.dumps(value).encode())
    try:
        load_manifest(path)
    except LoraMergeError:
        pass


@SETTINGS
@given(st.binary(max_size=200))
def test_manifest_loader_on_random_bytes(data):
    try:
        load_manifest(_file("skill.json", data))
    except LoraMergeError:
        pass


@SETTINGS
@given(json_values)
def test_pack_loader_on_random_adapter_config(value):
    folder = _DIR / "pack"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(value))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    try:
        load_pack(folder, verify=False)
    except LoraMergeError:
        pass


@SETTINGS
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=40),
       st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_all_finite_agrees_with_isfinite(values, dtype):
    t = torch.tensor(values, dtype=torch.float32).to(dtype)
    assert all_finite(t) == bool(torch.isfinite(t).all())
