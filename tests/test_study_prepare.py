"""θpre converted from GGUF is reused only while its weights and config are the ones that passed the logit check."""

from __future__ import annotations

import json
import sys

import pytest

from lora_merge.core.errors import LoraMergeError
from lora_merge.study.prepare import CONVERTER_VERSION, PREPARE_RECORD, folder_hashes, model_hashes, prepare_model


@pytest.fixture
def converted(tmp_path, monkeypatch):
    """A stand-in GGUF package and a folder recorded as converted from it (the conversion itself needs the
    SmolLM2 wheel, which `make test` does not install; `make demo` runs it)."""
    pkg = tmp_path / "site" / "fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    gguf = pkg / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("fake_gguf_pkg", None)
    out = tmp_path / "pre"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "config.json").write_text('{"model_type": "llama"}')
    record = {"converter": CONVERTER_VERSION, "gguf_name": gguf.name, "gguf_bytes": gguf.stat().st_size,
              "max_logit_diff": 0.0, "folder_sha256": folder_hashes(out)}
    (out / PREPARE_RECORD).write_text(json.dumps(record))
    return out


def test_an_unchanged_conversion_is_reused_without_loading_the_gguf(converted, monkeypatch):
    import lora_merge.study.prepare as prepare

    monkeypatch.setattr(prepare, "load_gguf", lambda *a: pytest.fail("the GGUF was loaded again"))
    got = prepare_model(converted, "fake_gguf_pkg")
    assert got.cached and got.folder == converted and got.max_logit_diff == 0.0


@pytest.mark.parametrize("changed", ["model.safetensors", "config.json"])
def test_a_changed_conversion_is_refused_and_left_as_it_is(converted, changed):
    target = converted / changed
    target.write_bytes(target.read_bytes() + b" ")
    before = {p.name: p.read_bytes() for p in converted.iterdir()}
    with pytest.raises(LoraMergeError, match=f"changed since it was converted.*{PREPARE_RECORD}.*delete the folder"):
        prepare_model(converted, "fake_gguf_pkg")
    assert {p.name: p.read_bytes() for p in converted.iterdir()} == before


def test_model_hashes_are_the_recorded_ones_or_hashed_now(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    hashed = folder_hashes(tmp_path)
    assert model_hashes(tmp_path) == hashed and set(hashed) == {"config.json", "model.safetensors"}
    recorded = {"model.safetensors": "ab" * 32, "config.json": "cd" * 32}  # what the conversion check wrote
    (tmp_path / PREPARE_RECORD).write_text(json.dumps({"folder_sha256": recorded}))
    assert model_hashes(tmp_path) == recorded
