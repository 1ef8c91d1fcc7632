"""Every rerun pinned (issue 35, item 4): the recipe a fold writes records every result-changing file of each pack
it read (a format-1 pack's config too) and the identity of the models it folded into; a rerun refuses a change."""

from __future__ import annotations

import json
import shutil

import yaml
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.pack.skillpack import ADAPTER_CONFIG, BASE_SKETCH
from lora_merge.pico import perturbed, save_model


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def make_v1(pack):
    """A pack as format 1 wrote it: only the weights hashed, no base sketch."""
    m = json.loads((pack / "skill.json").read_text())
    m["format_version"] = 1
    m["files"] = {k: v for k, v in m["files"].items() if k not in (ADAPTER_CONFIG, BASE_SKETCH)}
    (pack / "skill.json").write_text(json.dumps(m))
    (pack / BASE_SKETCH).unlink()


def fold_once(built, reg, out, general=None):
    res = cli("fold", "--general", general or built.gen_dir, "--adapters", "skill", "--adapters-dir", reg,
              "--weights", "1", "--out", out)
    assert res.exit_code == 0, res.output
    return out / "lora_merge_recipe.yml"


def test_a_recipe_from_a_format_1_pack_pins_its_config(built, reg, tmp_path):
    make_v1(reg / "skill")
    recipe = fold_once(built, reg, tmp_path / "out")
    pinned = yaml.safe_load(recipe.read_text())["adapters"][0]["sha256"]
    assert set(pinned) == {ADAPTER_CONFIG, "adapter_model.safetensors"}
    config = json.loads((reg / "skill" / ADAPTER_CONFIG).read_text())
    (reg / "skill" / ADAPTER_CONFIG).write_text(json.dumps({**config, "lora_alpha": 80}))  # 10× the delta
    res = cli("fold", "--config", recipe, "--out", tmp_path / "again")
    assert res.exit_code == 2 and "adapter_config.json is not the file the recipe recorded" in res.output, res.output
    assert not (tmp_path / "again").exists()


def test_a_file_the_recipe_does_not_pin_is_refused_too(built, reg, tmp_path):
    recipe = fold_once(built, reg, tmp_path / "out")
    body = yaml.safe_load(recipe.read_text())
    del body["adapters"][0]["sha256"][ADAPTER_CONFIG]  # a recipe written before configs were pinned
    recipe.write_text(yaml.safe_dump(body))
    res = cli("fold", "--config", recipe, "--out", tmp_path / "again")
    assert res.exit_code == 2 and "adapter_config.json is not pinned by the recipe" in res.output, res.output


def test_the_recipe_pins_the_general_model(built, reg, tmp_path):
    general = tmp_path / "general"
    shutil.copytree(built.gen_dir, general)
    recipe = fold_once(built, reg, tmp_path / "out", general)
    assert set(yaml.safe_load(recipe.read_text())["model_sha256"]) == {"general"}
    assert cli("fold", "--config", recipe, "--out", tmp_path / "same").exit_code == 0  # unchanged: reruns
    shutil.rmtree(general)
    save_model(perturbed(built.pre, seed=11), general)  # same layout, other weights, same folder
    res = cli("fold", "--config", recipe, "--out", tmp_path / "again")
    assert res.exit_code == 2 and f"the general model {general} is not the one the recipe recorded" in res.output
    assert not (tmp_path / "again").exists()
    # --general given on the command line replaces the recipe's model, and its pin
    res = cli("fold", "--config", recipe, "--general", general, "--out", tmp_path / "other")
    assert res.exit_code == 0, res.output


def test_the_base_of_linear_interp_is_pinned(built, reg, tmp_path):
    res = cli("fold", "--general", built.gen_dir, "--base", built.pre_dir, "--adapters", "skill", "--adapters-dir",
              reg, "--weights", "0.5", "--method", "linear_interp", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    pins = yaml.safe_load((tmp_path / "out" / "lora_merge_recipe.yml").read_text())["model_sha256"]
    assert set(pins) == {"general", "base"} and pins["general"] != pins["base"]
