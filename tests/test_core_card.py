"""Cards: huggingface_hub front matter (base_model, relation, licence) and tables whose rows keep their columns."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import ModelCard

from lora_merge.cli import main
from lora_merge.core.card import front_matter, pack_card
from lora_merge.core.hub import hub_id
from lora_merge.pack.skillpack import load_pack
from lora_merge.pico import make_lora_pack


def table_rows(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("|")]


def columns(row: str) -> int:
    """Cells of a markdown row: | splits a cell unless escaped as \\|."""
    return len(row.replace("\\|", "").strip("|").split("|"))


def test_merged_and_pack_cards_front_matter_and_escaped_tables(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    (gen_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# general\n")
    reg = tmp_path / "adapters"
    pack = make_lora_pack(pre, pre_dir, reg / "skill", "skill", instances=300)
    m = json.loads((pack / "skill.json").read_text())
    m["name"] = "a|b pipe"  # a name from a hand-written manifest, with a pipe in it
    (pack / "skill.json").write_text(json.dumps(m))
    out = tmp_path / "merged"
    res = CliRunner().invoke(main, ["fold", "--general", str(gen_dir), "--adapters", "skill", "--adapters-dir",
                                    str(reg), "--general-size", "1000", "--out", str(out)])
    assert res.exit_code == 0, res.output
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and "base_model_relation" not in card.data.to_dict()  # a local folder: no Hub id
    assert str(gen_dir) in card.text  # the body still names it
    assert card.data.license == "apache-2.0"
    assert "merge" in card.data.tags
    text = (out / "README.md").read_text()
    assert "lora-merge fold --config" in text and "```yaml" in text  # the command and the recipe
    rows = table_rows(text)
    assert len({columns(r) for r in rows}) == 1 and columns(rows[0]) == 8, rows
    assert "a\\|b pipe" in text and "\\|D\\|/\\|G\\| = 300/1000" in text

    manifest = load_pack(pack, verify=False).manifest
    text = pack_card(manifest)
    front = yaml.safe_load(text.split("---")[1])
    assert "base_model" not in front and "base_model_relation" not in front
    assert f"| base model | {pre_dir} |" in text
    assert all(columns(r) == 2 for r in table_rows(text) if not r.startswith("| metric")), table_rows(text)
    assert "# Skill pack: a|b pipe" in text


@pytest.mark.parametrize(("recorded", "front"), [
    ("/tmp/x/pre", None),  # a local absolute path: the author's layout, no Hub id
    ("/home/u/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/0123abc", "HuggingFaceTB/SmolLM2-135M"),
    ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M"),  # a repo id that names no local folder
    ("a/b/c", None),
    (None, None),
])
def test_front_matter_names_a_base_model_only_as_a_hub_id(recorded, front):
    """The Hub reads `base_model` as a repo id: a local path (issue 35: `base_model: /tmp/…`) is left out of it."""
    data = yaml.safe_load(front_matter(recorded, "adapter", "peft", ["x"]).split("---")[1])
    assert data.get("base_model") == front
    assert data.get("base_model_relation") == ("adapter" if front else None)


def test_a_local_folder_shaped_like_a_repo_id_is_not_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "pre").mkdir(parents=True)
    assert hub_id("models/pre") is None and hub_id("models/other") == "models/other"
