"""Merge recipes: `fold --config`, the resolved recipe every fold writes, and its bit-identical rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.fold.merge_recipe import RECIPE_NAME
from lora_merge.pico import make_lora_pack, state_of


@pytest.fixture
def world(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    reg = tmp_path / "adapters"
    make_lora_pack(pre, pre_dir, reg / "safety", "safety", seed=1, instances=300)
    make_lora_pack(pre, pre_dir, reg / "coding", "coding", seed=2, instances=500, target_modules=["q_proj", "v_proj"])
    return tmp_path, reg, gen_dir


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_rerun_from_the_written_recipe_is_bit_identical(world):
    tmp, reg, gen_dir = world
    out = tmp / "merged"
    res = run("fold", "--general", gen_dir, "--adapters-dir", reg, "--adapters", "safety,coding", "--general-size",
              1000, "--method", "dare_linear", "--density", 0.5, "--seed", 3, "--out", out)
    assert res.exit_code == 0, res.output
    text = (out / RECIPE_NAME).read_text()
    first = text.splitlines()[0]
    assert first == f"# lora-merge fold --config {out.absolute() / RECIPE_NAME} --out {out.absolute()}-rerun"
    recipe = yaml.safe_load(text)
    assert [(a["weight"], a["rule"]) for a in recipe["adapters"]] == [(0.3, "size_ratio"), (0.5, "size_ratio")]
    assert recipe["adapters"][0]["sha256"]["adapter_model.safetensors"]
    assert (recipe["method"], recipe["density"], recipe["seed"]) == ("dare_linear", 0.5, 3)
    res = run(*first.removeprefix("# lora-merge ").split())  # the exact command on the first line
    assert res.exit_code == 0, res.output
    again = Path(f"{out}-rerun")
    a, b = state_of(out), state_of(again)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in again.glob("*.safetensors"))
    for s in shards:
        assert (out / s).read_bytes() == (again / s).read_bytes()


def test_rerun_refuses_a_changed_pack(world):
    tmp, reg, gen_dir = world
    out = tmp / "merged"
    assert run("fold", "--general", gen_dir, "--adapters-dir", reg, "--adapters", "safety", "--weights", 0.5,
               "--out", out).exit_code == 0
    make_lora_pack(__import__("lora_merge.pico", fromlist=["x"]).pico_model("llama"), None, reg / "safety",
                   "safety", seed=9, instances=300)  # same pack name, new weights and manifest
    res = run("fold", "--config", out / RECIPE_NAME, "--out", tmp / "again")
    assert res.exit_code == 2 and "not the file the recipe recorded" in res.output, res.output
    assert not (tmp / "again").exists()


def test_config_file_with_command_line_overrides(world):
    tmp, reg, gen_dir = world
    cfg = tmp / "merge.yml"
    cfg.write_text(yaml.safe_dump({"general": str(gen_dir), "adapters_dir": str(reg), "out": str(tmp / "from-file"),
                                   "adapters": [{"pack": "safety", "weight": 0.2}, {"pack": "coding", "weight": 0.1}]}))
    res = run("fold", "--config", cfg)
    assert res.exit_code == 0, res.output
    packs = json.loads((tmp / "from-file" / "lora_merge.json").read_text())["packs"]
    assert [p["weight"] for p in packs] == [0.2, 0.1]
    res = run("fold", "--config", cfg, "--weights", "0.4,0.3", "--out", tmp / "override")
    assert res.exit_code == 0, res.output
    packs = json.loads((tmp / "override" / "lora_merge.json").read_text())["packs"]
    assert [p["weight"] for p in packs] == [0.4, 0.3]


@pytest.mark.parametrize("body, needle", [
    ({"general": "g", "adapters": [{"pack": "safety", "wieght": 1}]}, "adapters.0.wieght: unknown key"),
    ({"general": "g", "methd": "ties"}, "methd: unknown key"),
    ({"general": "g", "seed": "x"}, "seed"),
    ({"general": "g", "adapters": [{"pack": "a", "weight": 1}, {"pack": "b"}]}, "every adapter or for none"),
    ("- just a list", "mapping"),
])
def test_bad_recipes_are_one_clear_line(world, body, needle):
    tmp, _reg, _gen = world
    cfg = tmp / "bad.yml"
    cfg.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    res = run("fold", "--config", cfg, "--out", tmp / "o")
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert not (tmp / "o").exists()

