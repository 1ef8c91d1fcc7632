"""`pack merge` on the terminal: pack names come from the packs, so they are escaped like every other command's."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.pico import make_lora_pack

HOSTILE = "evil\x1b[2J\x1b[31m\rfake\u202e"


def test_pack_merge_prints_pack_names_escaped(built, tmp_path):
    reg = tmp_path / "adapters"
    for folder, seed in (("a", 2), ("b", 3)):
        pack = make_lora_pack(built.pre, built.pre_dir, reg / folder, folder, seed=seed, instances=100)
        manifest = json.loads((pack / "skill.json").read_text())
        manifest["name"] = HOSTILE + folder  # skill.json cannot hash itself: anyone may write its name
        (pack / "skill.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(main, ["pack", "merge", "--adapters", "a,b", "--adapters-dir", str(reg), "--base",
                                    str(built.pre_dir), "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    assert "\\x1b[2J\\x1b[31m\\x0dfake\\u202ea" in res.output and "\\u202eb" in res.output
    assert not any(c in res.output for c in "\x1b\r\u202e"), repr(res.output)
