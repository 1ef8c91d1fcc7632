"""Issue 15: a pack is covered whole by its hashes; hostile configs and hostile files cannot hang, exhaust memory
or escape. Each test is one reproduction from the issue."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.pack import adapter_config
from lora_merge.pack.sharing import import_pack
from lora_merge.pack.skillpack import BASE_SKETCH, load_pack

ADAPTER_CFG = "adapter_config.json"


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def fold_args(built, reg, out: Path, pack: str = "skill", *extra: str) -> list[str]:
    return ["fold", "--general", str(built.gen_dir), "--adapters", pack, "--adapters-dir", str(reg), "--weights",
            "0.5", "--out", str(out), *extra]


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def tar_of(folder: Path, name: str = "skill") -> bytes:
    """A .tar.gz of a pack folder as it is (export would refuse a tampered pack, an attacker would not)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for f in sorted(folder.iterdir()):
            tf.add(f, arcname=f"{name}/{f.name}")
    return buf.getvalue()


def make_v1(pack: Path) -> None:
    """Turn a pack into one written by the previous format: only weights hashed, no base sketch (format 2 came first)."""
    m = json.loads((pack / "skill.json").read_text())
    m["format_version"] = 1
    m["files"].pop(ADAPTER_CFG)
    m["files"].pop(BASE_SKETCH, None)
    (pack / "skill.json").write_text(json.dumps(m))
    (pack / BASE_SKETCH).unlink(missing_ok=True)


# --- item 2: the manifest covers the whole pack -----------------------------

def test_new_packs_hash_their_config(reg):
    m = json.loads((reg / "skill" / "skill.json").read_text())
    assert m["format_version"] == 2 and set(m["files"]) == {ADAPTER_CFG, "adapter_model.safetensors", "base_sketch.safetensors"}


def test_changed_lora_alpha_is_refused_by_verify_fold_export_and_import(built, reg, tmp_path):
    edit_json(reg / "skill" / ADAPTER_CFG, lora_alpha=80)
    res = cli("pack", "verify", "skill", "--adapters-dir", str(reg))
    assert res.exit_code == 2 and f"FAIL  sha256 {ADAPTER_CFG}" in res.output
    res = cli(*fold_args(built, reg, tmp_path / "out"))
    assert res.exit_code == 2 and "sha256 mismatch" in res.output and not (tmp_path / "out").exists()
    res = cli("pack", "export", "skill", "--adapters-dir", str(reg), "--out", str(tmp_path / "s.tar.gz"))
    assert res.exit_code == 2 and not (tmp_path / "s.tar.gz").exists()
    (tmp_path / "t.tar.gz").write_bytes(tar_of(reg / "skill"))
    with pytest.raises(LoraMergeError, match=f"sha256 {ADAPTER_CFG}"):
        import_pack(tmp_path / "t.tar.gz", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_format_1_pack_loads_with_a_warning_and_upgrade_covers_its_config(built, reg, tmp_path):
    make_v1(reg / "skill")
    res = cli("pack", "verify", "skill", "--adapters-dir", str(reg))
    assert res.exit_code == 0 and "not covered" in res.output
    res = cli(*fold_args(built, reg, tmp_path / "out"))
    assert res.exit_code == 0 and "does not cover adapter_config.json" in res.output
    res = cli("pack", "upgrade", "skill", "--adapters-dir", str(reg))
    assert res.exit_code == 0 and "format 1 → 2" in res.output, res.output
    m = json.loads((reg / "skill" / "skill.json").read_text())
    assert m["format_version"] == 2 and ADAPTER_CFG in m["files"]
    assert "already format 2" in cli("pack", "upgrade", "skill", "--adapters-dir", str(reg)).output
    edit_json(reg / "skill" / ADAPTER_CFG, lora_alpha=80)  # now a change is caught
    assert cli("pack", "verify", "skill", "--adapters-dir", str(reg)).exit_code == 2


def test_upgrade_refuses_a_pack_that_does_not_verify(reg):
    make_v1(reg / "skill")
    weights = reg / "skill" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    before = (reg / "skill" / "skill.json").read_bytes()
    res = cli("pack", "upgrade", "skill", "--adapters-dir", str(reg))
    assert res.exit_code == 2 and "sha256 mismatch" in res.output
    assert (reg / "skill" / "skill.json").read_bytes() == before


def test_a_manifest_of_an_unknown_newer_format_is_refused(reg):
    edit_json(reg / "skill" / "skill.json", format_version=3)
    with pytest.raises(LoraMergeError, match="format_version"):
        load_pack(reg / "skill")


# --- item 3: hostile adapter configs ----------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"r": 0}, "r"), ({"r": -4}, "r"), ({"r": "4"}, "r"), ({"r": True}, "r"), ({"r": 4.0}, "r"),
    ({"lora_alpha": [8]}, "lora_alpha"), ({"lora_alpha": "8"}, "lora_alpha"), ({"lora_alpha": 10**400}, "lora_alpha"),
    ({"rank_pattern": {"(": 4}}, "rank_pattern"), ({"rank_pattern": ["q_proj"]}, "rank_pattern"),
    ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"), ({"alpha_pattern": {"v_proj": "x"}}, "alpha_pattern"),
    ({"alpha_pattern": {"[": 2}}, "alpha_pattern"), ({"use_rslora": "yes"}, "use_rslora"),
    ({"peft_type": 3}, "peft_type"),
])
def test_malformed_config_fields_are_a_clear_error_naming_the_field(built, reg, tmp_path, change, field):
    edit_json(reg / "skill" / ADAPTER_CFG, **change)
    for args in (["pack", "verify", "skill", "--adapters-dir", str(reg)],
                 fold_args(built, reg, tmp_path / "out", "skill", "--no-verify")):
        res = cli(*args)
        assert res.exit_code == 2, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
        assert f"{field}" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_catastrophic_pattern_folds_in_bounded_time_with_peft_semantics(built, reg, tmp_path):
    """`(.|.|.)*z` hung `re`; matched by `regex` it ends at once, matching nothing, as PEFT would (eventually)."""
    edit_json(reg / "skill" / ADAPTER_CFG, rank_pattern={"(.|.|.)*z": 2})
    res = cli(*fold_args(built, reg, tmp_path / "a", "skill", "--no-verify"))
    assert res.exit_code == 0, res.output
    edit_json(reg / "skill" / ADAPTER_CFG, rank_pattern={})
    assert cli(*fold_args(built, reg, tmp_path / "b", "skill", "--no-verify")).exit_code == 0
    shards = sorted(p.name for p in (tmp_path / "a").glob("*.safetensors"))
    assert all((tmp_path / "a" / s).read_bytes() == (tmp_path / "b" / s).read_bytes() for s in shards)


def test_pattern_matching_agrees_with_peft():
    from peft.utils.other import get_pattern_key

    keys = ["q_proj", "layers.0.self_attn.q_proj", r"layers\.[0-9]+\.mlp\..*", "proj", "self_attn.v_proj", "k.proj"]
    modules = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.11.mlp.down_proj",
               "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.k_proj", "lm_head"]
    for module in modules:
        ours = next((k for k in keys if adapter_config.match_key(k, module, "t")), module)
        assert ours == get_pattern_key(keys, module)


def test_a_match_that_runs_out_of_time_is_a_clear_error(monkeypatch):
    class Slow:
        def match(self, *a, **kw):
            raise TimeoutError("regex time out")

    monkeypatch.setattr(adapter_config, "_compiled", lambda key: Slow())
    with pytest.raises(LoraMergeError, match="rank_pattern: key .* takes too long"):
        adapter_config.pattern_value({"x": 2}, "model.layers.0.q_proj", 4, "adapter_config.json: rank_pattern")


# --- item 4: memory and hostile files ----------------------------------------

def test_skill_json_linked_to_dev_zero_is_refused_at_once(built, reg, tmp_path):
    (reg / "skill" / "skill.json").unlink()
    os.symlink("/dev/zero", reg / "skill" / "skill.json")
    res = cli("pack", "verify", "skill", "--adapters-dir", str(reg))
    assert res.exit_code == 2 and "outside the pack" in res.output
    res = cli(*fold_args(built, reg, tmp_path / "out"))
    assert res.exit_code == 2 and "outside the pack" in res.output


@pytest.mark.parametrize("what", ["fifo", "dev-zero"])
def test_weights_that_are_a_fifo_or_a_device_link_are_refused_without_hanging(built, reg, tmp_path, what):
    weights = reg / "skill" / "adapter_model.safetensors"
    weights.unlink()
    if what == "fifo":
        os.mkfifo(weights)
    else:
        os.symlink("/dev/zero", weights)
    res = cli("pack", "verify", "skill", "--adapters-dir", str(reg))
    assert res.exit_code == 2 and ("a fifo" in res.output or "outside the pack" in res.output), res.output
    assert cli(*fold_args(built, reg, tmp_path / "out")).exit_code == 2


def test_a_link_inside_the_pack_is_followed(reg):
    weights = reg / "skill" / "adapter_model.safetensors"
    weights.rename(reg / "skill" / "real.safetensors")
    os.symlink("real.safetensors", weights)
    assert load_pack(reg / "skill").name == "skill"


def test_oversized_json_in_a_pack_folder_is_refused_by_its_size(reg):
    path = reg / "skill" / "skill.json"
    path.write_text(path.read_text() + " " * (1 << 20))
    with pytest.raises(LoraMergeError, match="too big for a manifest"):
        load_pack(reg / "skill")


def test_a_gigabyte_of_spaces_in_an_archived_skill_json_is_refused_before_reading_it(reg, tmp_path):
    """The member header claims 1 GiB; the import refuses it from the header, without inflating the data."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        info = tarfile.TarInfo("skill/skill.json")
        info.size = 1 << 30
        gz.write(info.tobuf(tarfile.USTAR_FORMAT))
        gz.write((reg / "skill" / "skill.json").read_bytes() + b" " * 4096)  # the rest is never reached
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(LoraMergeError, match="skill.json is 1073741824 bytes"):
        import_pack(archive, tmp_path / "adapters2")
    assert not (tmp_path / "adapters2").exists()


def test_import_of_a_format_1_pack_says_its_config_is_not_covered(reg, tmp_path):
    make_v1(reg / "skill")
    assert cli("pack", "export", "skill", "--adapters-dir", str(reg), "--out", str(tmp_path / "s.tar.gz")).exit_code == 0
    res = import_pack(tmp_path / "s.tar.gz", tmp_path / "other")
    assert any("does not cover adapter_config.json" in n for n in res.notes)
