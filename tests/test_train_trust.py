"""Issue 15: train never publishes NaN weights, and names follow one rule (train, extract, pack import)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from test_train import recipe as _train_recipe
from test_train import world  # noqa: F401 (a fixture: θpre with a character tokenizer and a skill file)

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.names import check_name


def recipe(world, tmp_path, **kw):  # noqa: F811
    return _train_recipe(world, tmp_path, **{"max_steps": 1, **kw})


def test_weight_decay_nan_in_a_recipe_is_refused_naming_the_key(world, tmp_path):  # noqa: F811
    cfg = tmp_path / "r.yaml"
    cfg.write_text("weight_decay: .nan\n")
    _, pre, data = world
    res = CliRunner().invoke(main, ["train", "--config", str(cfg), "--base", str(pre), "--data", str(data),
                                    "--name", "adder", "--adapters-dir", str(tmp_path / "adapters")])
    assert res.exit_code == 2 and "weight_decay" in res.output, res.output
    assert not (tmp_path / "adapters").exists()


def test_weights_that_went_non_finite_are_never_published(world, tmp_path):  # noqa: F811
    """Whatever makes training diverge (here a callback poisons one weight), the pack is refused before publishing."""
    from transformers import TrainerCallback

    from lora_merge.train.run import train_skill

    class Poison(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            p = next(p for n, p in model.named_parameters() if "lora_B" in n)
            with torch.no_grad():
                p[0, 0] = float("nan")

    with pytest.raises(LoraMergeError, match="non-finite weights .*lora_B.*nothing was published"):
        train_skill(recipe(world, tmp_path), callbacks=[Poison()])
    assert not (tmp_path / "adapters" / "adder").exists()
    assert not [p for p in (tmp_path / "adapters").iterdir()]  # no temporary folder either


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", ".hidden", "", "x" * 101, "tab\there"])
def test_train_name_outside_the_adapters_folder_is_refused_before_training(world, tmp_path, name):  # noqa: F811
    from lora_merge.train.run import plan_run

    with pytest.raises(LoraMergeError, match="not a plain name"):
        plan_run(recipe(world, tmp_path, name=name or None, data=world[2].with_name(".skill.jsonl")))
    assert not (tmp_path / "adapters").exists() and not (tmp_path.parent / "x").exists()


def test_train_extract_and_import_share_the_name_rule(world, tmp_path):  # noqa: F811
    _, pre, _ = world
    for args in (["train", "--base", str(pre), "--data", str(world[2]), "--name", "../x"],
                 ["extract", "--model", str(pre), "--base", str(pre), "--name", "../x"],
                 ["pack", "import", str(world[2]), "--name", "../x"]):
        res = CliRunner().invoke(main, args + ["--adapters-dir", str(tmp_path / "adapters")])
        assert res.exit_code == 2 and "'../x' is not a plain name" in res.output, (args, res.output)
    assert check_name("my-skill_2.1+v", "--name") == "my-skill_2.1+v"
