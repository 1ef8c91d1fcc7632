"""Issue 15: train never publishes NaN weights, and names follow one rule (train, extract, pack import)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.errors import LoraMergeError
from lora_merge.names import check_name
from lora_merge.recipes import load_recipe

PROMPTS = [(f"add {i} and {i + 3}: ", f"{2 * i + 3}!") for i in range(8)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lora_merge.pico import pico_char_tokenizer, pico_model, save_model

    root = tmp_path_factory.mktemp("train_trust")
    pre = save_model(pico_model("llama", hidden=32), root / "pre")
    pico_char_tokenizer(pre)
    data = root / "skill.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PROMPTS))
    return root, pre, data


def recipe(world, tmp_path, **kw):
    _, pre, data = world
    values = dict(base=pre, data=data, name="adder", adapters_dir=tmp_path / "adapters", run_dir=tmp_path / "run",
                  max_steps=1, batch_size=8, lr=2e-2, rank=4, alpha=8, dropout=0.0, progress=False)
    values.update(kw)
    return load_recipe(None, values)


def test_weight_decay_nan_in_a_recipe_is_refused_naming_the_key(world, tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("weight_decay: .nan\n")
    _, pre, data = world
    res = CliRunner().invoke(main, ["train", "--config", str(cfg), "--base", str(pre), "--data", str(data),
                                    "--name", "adder", "--adapters-dir", str(tmp_path / "adapters")])
    assert res.exit_code == 2 and "weight_decay" in res.output, res.output
    assert not (tmp_path / "adapters").exists()


def test_weights_that_went_non_finite_are_never_published(world, tmp_path):
    """Whatever makes training diverge (here a callback poisons one weight), the pack is refused before publishing."""
    from transformers import TrainerCallback

    from lora_merge.train import train_skill

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
def test_train_name_outside_the_adapters_folder_is_refused_before_training(world, tmp_path, name):
    from lora_merge.train import plan_run

    with pytest.raises(LoraMergeError, match="not a plain name"):
        plan_run(recipe(world, tmp_path, name=name or None, data=world[2].with_name(".skill.jsonl")))
    assert not (tmp_path / "adapters").exists() and not (tmp_path.parent / "x").exists()


def test_train_extract_and_import_share_the_name_rule(world, tmp_path):
    _, pre, _ = world
    for args in (["train", "--base", str(pre), "--data", str(world[2]), "--name", "../x"],
                 ["extract", "--model", str(pre), "--base", str(pre), "--name", "../x"],
                 ["pack", "import", str(world[2]), "--name", "../x"]):
        res = CliRunner().invoke(main, args + ["--adapters-dir", str(tmp_path / "adapters")])
        assert res.exit_code == 2 and "'../x' is not a plain name" in res.output, (args, res.output)
    assert check_name("my-skill_2.1+v", "--name") == "my-skill_2.1+v"
