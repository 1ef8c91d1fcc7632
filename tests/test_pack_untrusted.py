"""Untrusted packs: hashes, manifests, NaN/Inf weights and mismatched bases are refused and lose nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pack.skillpack import load_manifest, load_pack, write_manifest
from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of

KEY = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with the sha256 of its bytes (folders as 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def poison(pack: Path, key: str, value: float, rehash: bool = True) -> None:
    """Put ``value`` into one element of one adapter tensor; rehash so only the value is wrong."""
    f = pack / "adapter_model.safetensors"
    tensors = load_file(f)
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = value
    save_file(tensors, f)
    if rehash:
        write_manifest(pack, load_manifest(pack / "skill.json"))


def request(built, reg, out, **kw):
    return FoldRequest(general=built.gen_dir, packs=["skill"], adapters_dir=reg, out=out, weights=[1.0],
                       progress=False, **kw)


def test_hash_mismatch_is_refused_and_verify_says_which_file(built, reg, tmp_path):
    weights = reg / "skill" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # a flipped bit in the last tensor: the header stays valid, the hash does not
    weights.write_bytes(bytes(data))
    with pytest.raises(LoraMergeError, match="sha256 mismatch"):
        fold(request(built, reg, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(main, ["pack", "verify", "skill", "--adapters-dir", str(reg)])
    assert res.exit_code == 2
    assert "FAIL  sha256 adapter_model.safetensors" in res.output
    # --no-verify folds it anyway, and says loudly what it skipped
    res = CliRunner().invoke(main, ["fold", "--general", str(built.gen_dir), "--adapters", "skill", "--adapters-dir",
                                    str(reg), "--weights", "1", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["fold", "--general", str(built.gen_dir), "--adapters", "skill", "--adapters-dir",
                                    str(reg), "--weights", "1", "--out", str(tmp_path / "out"), "--no-verify"])
    assert res.exit_code == 0, res.output
    assert "NOT checked against their manifest hashes" in res.output


def test_verify_passes_a_good_pack(reg):
    res = CliRunner().invoke(main, ["pack", "verify", "skill", "--adapters-dir", str(reg)])
    assert res.exit_code == 0, res.output
    assert "FAIL" not in res.output and "every value is finite" in res.output


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.pop("name"), "name"),
    (lambda m: m.pop("kind"), "kind"),
    (lambda m: m.update(kind=5), "kind"),
    (lambda m: m["data"].update(instances="many"), "data.instances"),
    (lambda m: m.update(files=["adapter_model.safetensors"]), "files"),
    (lambda m: m.update(base_model="llama"), "base_model"),
    (lambda m: m.update(surprise=1), "surprise"),
])
def test_manifest_with_missing_or_wrongly_typed_fields(reg, edit, field):
    path = reg / "skill" / "skill.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(LoraMergeError, match=f"invalid manifest: .*{field}"):
        load_pack(reg / "skill")


@pytest.mark.parametrize("value, shown", [(float("nan"), "1 NaN"), (float("inf"), "1 +Inf"), (float("-inf"), "1 -Inf")])
def test_non_finite_pack_is_refused_naming_the_tensor(built, reg, tmp_path, value, shown):
    poison(reg / "skill", KEY, value)
    with pytest.raises(LoraMergeError) as err:
        fold(request(built, reg, tmp_path / "out"))
    assert KEY in str(err.value) and shown in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".lora_merge.out.*"))
    res = CliRunner().invoke(main, ["pack", "verify", "skill", "--adapters-dir", str(reg)])
    assert res.exit_code == 2 and KEY in res.output and "FAIL  values adapter_model.safetensors" in res.output


def test_refused_fold_leaves_the_existing_output_exactly_as_it_was(built, reg, tmp_path):
    out = tmp_path / "out"
    fold(request(built, reg, out))
    before_out, before_reg = snapshot(out), snapshot(reg)
    poison(reg / "skill", KEY, float("nan"))
    before_reg = snapshot(reg)
    with pytest.raises(LoraMergeError, match="NaN"):
        fold(request(built, reg, out, force=True))
    assert snapshot(out) == before_out and snapshot(reg) == before_reg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters", "out"]


def test_pack_from_another_model_family_is_an_error_naming_the_difference(built, reg, tmp_path):
    wide = pico_model("llama", hidden=64)
    wide_dir = save_model(wide, tmp_path / "wide")
    make_lora_pack(wide, wide_dir, reg / "wide", "wide", seed=1)
    with pytest.raises(LoraMergeError, match=r"hidden_size: 64 vs 32.*same family"):
        fold(FoldRequest(general=built.gen_dir, packs=["wide"], adapters_dir=reg, out=tmp_path / "out",
                         weights=[1.0], progress=False))
    assert not (tmp_path / "out").exists()


def test_compatible_but_different_base_warns_and_the_card_records_it(built, reg, tmp_path):
    # same tensor shapes, another architecture name in the recorded base: compatible, so a warning
    manifest = load_manifest(reg / "skill" / "skill.json")
    cfg = dict(manifest.base_model.config, model_type="mistral")
    write_manifest(reg / "skill", manifest.model_copy(update={"base_model": manifest.base_model.model_copy(
        update={"config": cfg})}))
    res = fold(request(built, reg, tmp_path / "out"))
    assert len(res.warnings) == 1 and "model_type: 'mistral' vs 'llama'" in res.warnings[0]
    assert "model_type: 'mistral' vs 'llama'" in (tmp_path / "out" / "README.md").read_text()
    assert json.loads((tmp_path / "out" / "lora_merge.json").read_text())["warnings"] == res.warnings


def test_the_pack_own_base_gives_no_warning(built, reg, tmp_path):
    res = fold(request(built, reg, tmp_path / "out"))
    assert res.warnings == []
    # and the fold is θG + ΔW: the general model's untouched tensors come through bit for bit
    ours, general = state_of(tmp_path / "out"), state_of(built.gen_dir)
    assert torch.equal(ours["model.norm.weight"], general["model.norm.weight"])
