"""Issue 35 item 1: nothing is written through a link. A pack file is rewritten only after `pack verify`'s checks,
staged and renamed (core.output.replace_file), so a link in its place is replaced and its target never changes."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.leftovers import temp_path
from lora_merge.core.output import replace_file
from lora_merge.pack.rewrite import rewrite_manifests
from lora_merge.pack.skillpack import RecommendedWeight, load_pack

RC = "echo pwned  # the user's shell start-up file\n"


def _recommend(pack, value=0.4):
    return rewrite_manifests([(pack, {"recommended_weight": RecommendedWeight(value=value, rule="test")})], "test")


def test_a_readme_linked_out_of_the_pack_is_refused_and_its_target_unchanged(reg, tmp_path):
    pack = reg / "skill"
    rc = tmp_path / "home" / ".bashrc"
    rc.parent.mkdir()
    rc.write_text(RC)
    (pack / "README.md").unlink()
    (pack / "README.md").symlink_to(rc)
    manifest_before = (pack / "skill.json").read_bytes()
    with pytest.raises(LoraMergeError, match=r"test: .*nothing written.*README\.md.*outside the pack"):
        _recommend(pack)
    assert rc.read_text() == RC and (pack / "README.md").is_symlink()
    assert (pack / "skill.json").read_bytes() == manifest_before  # nothing written, not even skill.json
    res = CliRunner().invoke(main, ["pack", "upgrade", str(pack)])  # the other rewriter of an existing pack
    assert res.exit_code == 2 and "outside the pack" in res.output and rc.read_text() == RC


@pytest.mark.parametrize("name", ["README.md", "skill.json"])
def test_a_link_inside_the_pack_is_replaced_not_written_through(reg, name):
    pack = reg / "skill"
    keep = pack / f"notes-{name}"  # a file inside the pack the link points to (allowed by `pack verify`)
    os.replace(pack / name, keep)
    (pack / name).symlink_to(keep.name)
    before = keep.read_bytes()
    _recommend(pack)
    assert not (pack / name).is_symlink() and (pack / name).is_file()
    assert keep.read_bytes() == before  # the link's target is untouched
    m = load_pack(pack).manifest  # still verifies: the hashes were kept as checked
    assert m.recommended_weight.value == 0.4 and "recommended ω | 0.4" in (pack / "README.md").read_text()


def test_the_rewrite_keeps_the_verified_hashes_and_format(reg):
    pack = reg / "skill"
    doc = json.loads((pack / "skill.json").read_text())
    (pack / "base_sketch.safetensors").unlink(missing_ok=True)  # a real format-1 pack: no sketch, config not hashed
    doc["format_version"] = 1
    doc["files"] = {k: v for k, v in doc["files"].items() if k not in ("adapter_config.json", "base_sketch.safetensors")}
    (pack / "skill.json").write_text(json.dumps(doc))
    _recommend(pack)
    after = json.loads((pack / "skill.json").read_text())
    assert after["format_version"] == 1 and after["files"] == doc["files"]  # never silently re-hashed as format 2


def test_a_planted_link_at_the_temporary_name_is_not_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep")
    out = tmp_path / "pack" / "skill.json"
    out.parent.mkdir()
    temp_path(out).symlink_to(target)  # the name replace_file stages under, guessed by an attacker
    replace_file(out, "{}\n")
    assert out.read_text() == "{}\n" and target.read_text() == "keep" and not temp_path(out).exists()


def test_replace_file_refuses_a_folder_and_leaves_no_temporary(tmp_path):
    (tmp_path / "README.md").mkdir()
    with pytest.raises(LoraMergeError, match="is a folder"):
        replace_file(tmp_path / "README.md", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
