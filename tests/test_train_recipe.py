"""Recipes: every shipped YAML validates, names its own command, and bad keys or types are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.merge_recipe import load_merge_recipe
from lora_merge.train.training_recipe import TrainingRecipe, load_training_recipe

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "configs").glob("train/*.yaml")) + sorted((ROOT / "configs").glob("skills/*.yaml"))


def test_the_issue_recipes_are_shipped():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in SHIPPED}
    assert {"train/qlora-24gb.yaml", "train/lora-cpu.yaml", "train/full.yaml", "skills/safety.yaml",
            "skills/coding.yaml", "skills/science.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipe_validates_and_gives_its_command(path):
    recipe = load_training_recipe(path)
    assert isinstance(recipe, TrainingRecipe)
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# python cli.py train --config configs/{path.parent.name}/{path.name}")


MERGE_RECIPES = sorted((ROOT / "configs").glob("merge/*.yml"))


def test_a_merge_recipe_is_shipped():
    assert "merge/example.yml" in {p.relative_to(ROOT / "configs").as_posix() for p in MERGE_RECIPES}


@pytest.mark.parametrize("path", MERGE_RECIPES, ids=lambda p: f"merge/{p.name}")
def test_shipped_merge_recipe_validates_and_gives_its_command(path):
    recipe = load_merge_recipe(path)
    assert recipe.adapters and recipe.general
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# lora-merge fold --config configs/merge/{path.name}")


def test_qlora_recipe_is_the_24gb_setting():
    r = load_training_recipe(ROOT / "configs/train/qlora-24gb.yaml")
    assert (r.mode, r.quant_type, r.double_quant, r.rank, r.alpha) == ("qlora", "nf4", True, 16, 32)
    assert (r.target_modules, r.gradient_checkpointing, r.optim, r.precision) == ("all-linear", True,
                                                                                 "paged_adamw_8bit", "bf16")


def test_full_recipe_is_the_papers_setting():
    r = load_training_recipe(ROOT / "configs/train/full.yaml")
    assert (r.mode, r.lr, r.epochs, r.warmup, r.lr_scheduler, r.precision) == ("full", 2e-5, 2, 0.03, "linear", "bf16")


def test_skill_recipe_extends_a_training_recipe_and_flags_win():
    r = load_training_recipe(ROOT / "configs/skills/safety.yaml", {"mode": "lora", "epochs": 1, "lr": None})
    assert (r.name, r.mode, r.epochs, r.rank, r.lr) == ("safety", "lora", 1, 16, 2e-4)
    assert r.data == Path("data/safety.jsonl")


def test_unknown_key_names_the_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("mode: lora\nlearning_rate: 0.1\n")
    with pytest.raises(LoraMergeError, match="learning_rate: unknown key"):
        load_training_recipe(bad)


def test_wrong_type_names_the_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("rank: many\n")
    with pytest.raises(LoraMergeError, match="rank"):
        load_training_recipe(bad)
    with pytest.raises(LoraMergeError, match="mode"):
        load_training_recipe(None, {"mode": "int8"})


def test_extends_loop_and_missing_file_are_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(LoraMergeError, match="loops"):
        load_training_recipe(tmp_path / "a.yaml")
    with pytest.raises(LoraMergeError, match="does not exist"):
        load_training_recipe(tmp_path / "nope.yaml")
