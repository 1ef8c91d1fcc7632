"""Merge recipes: `fold --config`, the resolved recipe every fold writes, and its bit-identical rerun."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.fold.merge_recipe import MergeRecipe
from lora_merge.fold.request import PATH_FIELDS, FoldRequest, fold_request
from lora_merge.fold.resolved_recipe import RECIPE_NAME
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



def error_lines(res) -> list[str]:
    return [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]


def unlabelled(line: str) -> str:
    """An error line without "error:" and the label saying where the bad value was written."""
    return re.sub(r"^error: (--weights|merge recipe):? ", "", line)


def test_request_path_fields_are_paths_whatever_was_passed(world, tmp_path):
    tmp, reg, gen_dir = world
    req = FoldRequest(general=str(gen_dir), packs=["safety"], out=str(tmp / "o"), adapters_dir=str(reg),
                      base=tmp / "b", cft="c")
    fields = {k: getattr(req, k) for k in PATH_FIELDS}
    assert fields == {"general": gen_dir, "out": tmp / "o", "adapters_dir": reg, "base": tmp / "b", "cft": Path("c")}
    assert all(isinstance(v, Path) for v in fields.values())
    assert isinstance(replace(req, out=str(tmp / "p")).out, Path)  # a sweep's reweighted request too
    recipe = MergeRecipe.model_validate({"general": str(gen_dir), "adapters": [{"pack": "safety"}],
                                         "adapters_dir": str(reg), "base": str(gen_dir), "out": str(tmp / "o")})
    built = fold_request(recipe, {"cft": tmp / "cft"})
    assert all(isinstance(getattr(built, k), Path) for k in PATH_FIELDS), built


@pytest.mark.parametrize("weights, recipe_weights, message", [
    ("nan", [float("nan")], "ω = nan is outside the sane range [-10, 10]"),
    ("inf", [float("inf")], "ω = inf is outside the sane range [-10, 10]"),
    ("-inf", [float("-inf")], "ω = -inf is outside the sane range [-10, 10]"),
    ("0.1,0.2,0.3", None, "gives 3 value(s) for 2 packs; give one per pack, in order"),
])
def test_a_bad_omega_reads_the_same_from_the_command_line_and_a_recipe(world, weights, recipe_weights, message):
    tmp, reg, gen_dir = world
    packs = ["safety"] if recipe_weights else ["safety", "coding"]
    cli = run("fold", "--general", gen_dir, "--adapters-dir", reg, "--adapters", ",".join(packs),
              "--weights", weights, "--out", tmp / "o")
    cfg = tmp / "merge.yml"
    adapters = [{"pack": p} | ({"weight": w} if recipe_weights else {})
                for p, w in zip(packs, recipe_weights or [None] * len(packs), strict=True)]
    cfg.write_text(yaml.safe_dump({"general": str(gen_dir), "adapters_dir": str(reg), "adapters": adapters}))
    # ω in the recipe, or --weights laid over the recipe's packs: the same check, the same words
    from_recipe = run("fold", "--config", cfg, "--out", tmp / "o", *([] if recipe_weights else ["--weights", weights]))
    for res in (cli, from_recipe):
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert len(error_lines(res)) == 1 and message in error_lines(res)[0], res.output
    # one message, its label naming where ω was written
    assert [unlabelled(error_lines(r)[0]) for r in (cli, from_recipe)] == [message] * 2
    assert not (tmp / "o").exists()


def test_a_recipe_cft_weight_is_held_to_the_same_check(world):
    tmp, reg, gen_dir = world
    cfg = tmp / "merge.yml"
    cfg.write_text(yaml.safe_dump({"general": str(gen_dir), "adapters_dir": str(reg), "cft_weight": 12.0,
                                   "adapters": [{"pack": "safety"}]}))
    res = run("fold", "--config", cfg, "--out", tmp / "o")
    assert res.exit_code == 2 and error_lines(res) == [
        "error: merge recipe: ω = 12 is outside the sane range [-10, 10]"], res.output


def test_options_given_override_the_recipe(world):
    tmp, reg, gen_dir = world
    cfg = tmp / "merge.yml"
    cfg.write_text(yaml.safe_dump({
        "general": str(gen_dir), "adapters_dir": str(reg), "out": str(tmp / "from-file"), "method": "dare_linear",
        "density": 0.5, "seed": 3, "adapters": [{"pack": "safety", "weight": 0.2, "sha256": {"x": "0" * 64}}]}))
    res = run("fold", "--config", cfg, "--adapters", "coding", "--weights", "0.7", "--method", "linear",
              "--out", tmp / "given")
    assert res.exit_code == 0, res.output  # the recipe's hashes went with its adapters
    record = json.loads((tmp / "given" / "lora_merge.json").read_text())
    assert [(p["name"], p["weight"]) for p in record["packs"]] == [("coding", 0.7)]
    assert (record["method"], record["density"], record["seed"]) == ("linear", 0.5, 3)  # the rest from the recipe
    assert not (tmp / "from-file").exists()
    recipe = MergeRecipe.model_validate(yaml.safe_load(cfg.read_text()))
    req = fold_request(recipe, {"adapters": "coding", "no_verify": True, "seed": 0, "out": tmp / "o"})
    assert (req.packs, req.weights, req.expected_sha256, req.verify, req.seed, req.density, req.method) == (
        ["coding"], None, None, False, 0, 0.5, "dare_linear")
    assert fold_request(recipe, {}).weights == [0.2] and fold_request(recipe, {}).out == tmp / "from-file"


def test_fold_request_errors_without_general_or_out(world):
    tmp, reg, gen_dir = world
    res = run("fold", "--adapters", "safety", "--out", tmp / "o")
    assert error_lines(res) == ["error: --general is required (or a merge recipe: --config merge.yml)"], res.output
    res = run("fold", "--general", gen_dir, "--adapters-dir", reg, "--adapters", "safety")
    assert error_lines(res) == ["error: no output folder: pass --out DIR (or `out:` in the recipe)"], res.output
