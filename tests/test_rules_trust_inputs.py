"""Issue 15: ω in range whichever rule chose it, train names and finite weights, shard sizes, escaped strings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.rules.omega import choose_weights, parse_weights, size_weight


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def set_instances(reg: Path, value) -> None:
    """Edit |D| as a hostile sender would (the manifest's hashes cover the files, not skill.json itself)."""
    path = reg / "skill" / "skill.json"
    m = json.loads(path.read_text())
    m["data"]["instances"] = value
    path.write_text(json.dumps(m))


def fold_sized(built, reg, out: Path, general_size: str = "1000", *extra: str):
    return cli("fold", "--general", str(built.gen_dir), "--adapters", "skill", "--adapters-dir", str(reg),
               "--general-size", general_size, "--out", str(out), *extra)


# --- item 5: ω in range -------------------------------------------------------

@pytest.mark.parametrize("instances, general_size, shown", [
    (10**12, "1000", "1000000000000/1000"),  # ω = 1e9
    (100, "1", "100/1"),  # --general-size 1: ω = 100
    (10**400, "1000", "|D| = 1.000e+400"),  # was an OverflowError traceback
], ids=["D=1e12", "G=1", "D=1e400"])
def test_omega_from_sizes_is_held_to_the_explicit_bound_naming_d_and_g(built, reg, tmp_path, instances, general_size, shown):
    set_instances(reg, instances)
    res = fold_sized(built, reg, tmp_path / "out", general_size)
    assert res.exit_code == 2 and "sane limit of 10" in res.output and shown in res.output, res.output
    assert "|D|" in res.output and "|G|" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["100", True, 1.5, 0, -3])
def test_d_is_a_positive_integer_without_coercion(built, reg, tmp_path, value):
    set_instances(reg, value)
    res = fold_sized(built, reg, tmp_path / "out")
    assert res.exit_code == 2 and "data.instances" in res.output, res.output


def test_explicit_and_size_rules_share_one_bound():
    assert cli("fold", "--general", "x", "--adapters", "s", "--weights", "11", "--out", "o").exit_code == 2
    with pytest.raises(LoraMergeError, match=r"ω = 11 is outside the sane range \[-10, 10\]"):
        parse_weights("0.5,11", 2)
    with pytest.raises(LoraMergeError, match="not a finite number"):
        choose_weights(["s"], [None], [float("nan")], None)
    assert size_weight("s", 10_000, 1000, "size_ratio").value == 10.0  # the bound itself is allowed
    with pytest.raises(LoraMergeError, match="sane limit of 10"):
        size_weight("s", 10_001, 1000, "size_ratio")
    assert size_weight("s", 10**400, 1000, "size_fraction").value == pytest.approx(1.0)  # in (0, 1) always
    with pytest.raises(LoraMergeError, match=r"\|G\|"):
        size_weight("s", 100, True, "size_ratio")


def test_general_size_true_in_the_general_models_record_is_refused(built, reg, tmp_path):
    general = tmp_path / "general"
    shutil.copytree(built.gen_dir, general)
    (general / "lora_merge.json").write_text(json.dumps({"data": {"instances": True}}))
    res = cli("fold", "--general", str(general), "--adapters", "skill", "--adapters-dir", str(reg),
              "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and "data.instances must be a positive integer" in res.output


def test_recommended_weight_out_of_range_is_an_invalid_manifest(reg):
    path = reg / "skill" / "skill.json"
    m = json.loads(path.read_text())
    m["recommended_weight"] = {"value": 1e9, "rule": "sweep"}
    path.write_text(json.dumps(m))
    res = cli("pack", "verify", "skill", "--adapters-dir", str(reg))
    assert res.exit_code == 2 and "recommended_weight.value" in res.output


# --- item 8 (part): shard sizes parsed before anything is created --------------

@pytest.mark.parametrize("size", ["0", "-1", "abc", "nan", "inf", "0.1"])
def test_bad_max_shard_size_is_refused_while_parsing_options(built, reg, tmp_path, size):
    out = tmp_path / "models" / "out"
    res = cli("fold", "--general", str(built.gen_dir), "--adapters", "skill", "--adapters-dir", str(reg),
              "--weights", "0.5", "--max-shard-size", size, "--out", str(out))
    assert res.exit_code == 2 and "Invalid value for '--max-shard-size'" in res.output, res.output
    assert not (tmp_path / "models").exists()  # not even the parent: nothing was created


def test_parse_size_refuses_non_finite_and_sub_byte_sizes():
    from lora_merge.io.shards import parse_size

    assert parse_size("2GiB") == 2 << 30 and parse_size(1024) == 1024
    for bad in ("nan", "inf", "-inf", "0", "-5GB", "0.1", 0, -1, True):
        with pytest.raises(LoraMergeError):
            parse_size(bad)


# --- item 9: control characters in manifests ------------------------------------

HOSTILE = "evil\x1b[2J\x1b[31m\rreal\x07\u202egnp.exe"


def test_control_characters_in_a_manifest_are_escaped_on_the_terminal_and_in_cards(built, reg, tmp_path):
    from lora_merge.core.card import pack_card
    from lora_merge.pack.skillpack import load_pack

    path = reg / "skill" / "skill.json"
    m = json.loads(path.read_text())
    m.update(name=HOSTILE, description=f"line one{HOSTILE}", license="\x9bMIT")
    path.write_text(json.dumps(m))
    res = cli("pack", "inspect", "skill", "--adapters-dir", str(reg))
    assert res.exit_code == 0, res.output
    assert "evil\\x1b[2J\\x1b[31m\\x0dreal\\x07\\u202egnp.exe" in res.output
    res = cli("fold", "--general", str(built.gen_dir), "--adapters", "skill", "--adapters-dir", str(reg),
              "--weights", "0.5", "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    for text in (res.output, (tmp_path / "out" / "README.md").read_text(),
                 pack_card(load_pack(reg / "skill").manifest)):
        assert not any(c in text for c in "\x1b\x07\u202e\x9b"), text  # (\r: the progress bar's own)
    assert "\\x0dreal" in res.output and "\r" not in (tmp_path / "out" / "README.md").read_text()
    assert "\\x9bMIT" in pack_card(load_pack(reg / "skill").manifest)


def test_printable_keeps_ordinary_text():
    from lora_merge.core.printable import printable

    assert printable("café – 数学 ω=0.5 🙂") == "café – 数学 ω=0.5 🙂"
    assert printable("a\nb\tc", keep="\n") == "a\nb\\x09c"


@pytest.mark.parametrize("value", ["0", "-2"])
def test_extract_refuses_a_size_the_manifest_would_refuse(built, tmp_path, value):
    res = cli("extract", "--model", str(built.gen_dir), "--base", str(built.pre_dir), "--name", "x",
              "--adapters-dir", str(tmp_path / "adapters"), "--instances", value)
    assert res.exit_code == 2 and "positive count" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "adapters").exists()
