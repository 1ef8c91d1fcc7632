"""`org/name` for a model folder: resolved from the local Hugging Face cache only, never downloaded."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.hub import resolve_model
from lora_merge.pico import make_lora_pack, state_of

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(cache, repo_id, folder):
    """Lay ``folder`` out as huggingface_hub's cache does: models--org--name/snapshots/<hash>/… and refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / SNAPSHOT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return repo / "snapshots" / SNAPSHOT


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "hf-cache"
    c.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    monkeypatch.chdir(tmp_path)  # no local folder named org/…
    return c


def test_cached_reference_resolves_and_folds(cache, tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    snap = cache_model(cache, "pico-org/general", gen_dir)
    assert resolve_model("pico-org/general") == snap
    assert resolve_model(str(gen_dir)) == gen_dir  # a local folder is taken as is
    pack = make_lora_pack(pre, pre_dir, tmp_path / "skill", "skill")
    res = CliRunner().invoke(main, ["fold", "--general", "pico-org/general", "--adapters", str(pack), "--weights",
                                    "0.5", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    from huggingface_hub import ModelCard

    assert ModelCard.load(tmp_path / "a" / "README.md").data.base_model == "pico-org/general"  # the snapshot's repo
    res = CliRunner().invoke(main, ["fold", "--general", str(gen_dir), "--adapters", str(pack), "--weights", "0.5",
                                    "--out", str(tmp_path / "b")])
    a, b = state_of(tmp_path / "a"), state_of(tmp_path / "b")
    assert all((a[k] == b[k]).all() for k in a)


def test_missing_reference_says_how_to_download(cache, tmp_path):
    with pytest.raises(LoraMergeError, match="hf download nobody/nothing"):
        resolve_model("nobody/nothing", "--general")
    for args in (["fold", "--general", "nobody/nothing", "--adapters", "x", "--weights", "1", "--out", "o"],
                 ["eval", "--model", "nobody/nothing", "--evals", "g=x.jsonl", "--out", "o"],
                 ["extract", "--model", "nobody/nothing", "--base", "nobody/base", "--name", "n"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "hf download nobody/" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()
