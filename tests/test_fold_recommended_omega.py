"""Issue 35 item 4 (part): a pack's recommended ω (skill.json, which is not hashed) is bounded where it is read,
and the fold's recipe pins the ω it used, so a later edit of skill.json cannot change a rerun."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from safetensors.numpy import load_file

from lora_merge.cli import main
from lora_merge.rules.omega import RECOMMENDED_FACTOR, recommended_warning


def recommend(reg, value) -> None:
    """Write a recommended ω into skill.json as a hostile sender would (its hashes cover the files, not itself)."""
    path = reg / "skill" / "skill.json"
    doc = json.loads(path.read_text())
    doc["recommended_weight"] = {"value": value, "rule": "general-noninferior:5"}
    path.write_text(json.dumps(doc))


def fold(built, reg, out, *extra):
    return CliRunner().invoke(main, ["fold", "--general", str(built.gen_dir), "--adapters", "skill", "--adapters-dir",
                                     str(reg), "--out", str(out), *map(str, extra)])


def test_a_negative_recommended_omega_is_refused_by_name(built, reg, tmp_path):
    recommend(reg, -10)
    for extra in (["--general-size", 1000], ["--weights", 0.5]):  # an invalid manifest, whichever ω is asked
        res = fold(built, reg, tmp_path / "out", *extra)
        assert res.exit_code == 2, res.output
        assert "skill.json" in res.output and "recommended_weight.value" in res.output
        assert "ω = -10 is negative" in res.output and "Traceback" not in res.output
        assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(main, ["pack", "verify", str(reg / "skill")])
    assert res.exit_code == 2 and "is negative" in res.output


@pytest.mark.parametrize("value, general_size, warned", [
    (1.5, 10_000, "150× its |D|/|G| = 100/10000"),  # |D|/|G| = 0.01: past the factor of 100
    (0.5, 10_000, None),  # 50×: a sweep may rightly land there
    (0.0, 1000, "recommends ω = 0"),
])
def test_a_recommended_omega_far_from_the_size_rule_is_warned_about_by_name(built, reg, tmp_path, value,
                                                                          general_size, warned):
    recommend(reg, value)
    res = fold(built, reg, tmp_path / "out", "--general-size", general_size)
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "out" / "lora_merge.json").read_text())
    assert (record["packs"][0]["weight"], record["packs"][0]["rule"]) == (value, "recommended")
    found = [w for w in record.get("warnings", []) if "recommends" in w]
    if warned is None:
        assert not found
    else:
        assert len(found) == 1 and "pack 'skill'" in found[0] and warned in found[0], found


def test_the_factor_by_hand():
    # |D|/|G| = 100/1000 = 0.1: in bounds from 0.1/100 = 0.001 to 0.1·100 = 10, both ends included
    assert RECOMMENDED_FACTOR == 100
    assert recommended_warning("s", 10.0, 100, 1000) is None and recommended_warning("s", 0.001, 100, 1000) is None
    assert "more than 100× away" in recommended_warning("s", 0.0009, 100, 1000)
    assert recommended_warning("s", 5.0, None, 1000) is None  # |D| unknown: nothing to compare with


def test_the_recipe_pins_the_recommended_omega_against_a_later_edit(built, reg, tmp_path):
    recommend(reg, 0.4)
    first = tmp_path / "first"
    assert fold(built, reg, first, "--general-size", 1000).exit_code == 0
    recipe = yaml.safe_load((first / "lora_merge_recipe.yml").read_text())
    assert recipe["adapters"][0]["weight"] == 0.4 and recipe["adapters"][0]["rule"] == "recommended"
    recommend(reg, 0.9)  # skill.json is not hashed: the pack still verifies
    again = tmp_path / "again"
    res = CliRunner().invoke(main, ["fold", "--config", str(first / "lora_merge_recipe.yml"), "--out", str(again)])
    assert res.exit_code == 0, res.output
    assert json.loads((again / "lora_merge.json").read_text())["packs"][0]["weight"] == 0.4
    a, b = load_file(str(first / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
