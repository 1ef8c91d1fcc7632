"""`pack create`: a plain PEFT adapter becomes a pack that folds at ω = |D|/|G| like PEFT's merge (the oracle);
bad adapters are refused with one clear line and nothing written."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from safetensors.torch import load_file, save_file

from lora_merge.cli import main
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pack.skillpack import load_pack
from lora_merge.pico import make_lora_pack, save_model, state_of


@pytest.fixture
def adapter(tmp_path, pico_dirs):
    """A plain PEFT adapter saved by PEFT (no skill.json), trained 'elsewhere' on θpre."""
    pre, gen, pre_dir, gen_dir = pico_dirs
    src = make_lora_pack(pre, pre_dir, tmp_path / "unsloth_out", "x", seed=3, manifest=False)
    return tmp_path, pre, gen, pre_dir, gen_dir, src


def create(*args):
    return CliRunner().invoke(main, ["pack", "create", *map(str, args)])


def assert_refused(res, out, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, res.output
    assert not out.exists()
    assert not list(out.parent.glob(f".lora_merge.{out.name}.*"))


def test_pack_create_then_fold_equals_scaled_peft_merge(adapter):
    tmp, pre, gen, pre_dir, gen_dir, src = adapter
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    reg = tmp / "adapters"
    res = create(src, "--name", "tone", "--instances", 300, "--base", pre_dir, "--adapters-dir", reg,
                 "--license", "mit", "--description", "a tone skill")
    assert res.exit_code == 0, res.output
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the source is untouched
    pack = load_pack(reg / "tone")  # verifies the hashes
    m = pack.manifest
    assert (m.format_version, m.data.instances, m.license, m.kind) == (2, 300, "mit", "lora")
    assert set(m.files) == {"adapter_config.json", "adapter_model.safetensors", "base_sketch.safetensors"}  # --base: sketched
    assert m.base_model.shapes_sha256 and m.base_model.name_or_path == str(pre_dir)

    out = tmp / "merged"
    fold(FoldRequest(general=gen_dir, packs=["tone"], adapters_dir=reg, out=out, general_size=1000, progress=False))
    omega = 300 / 1000
    # oracle: PEFT's merge of the adapter into θpre gives τ = merged − θpre; θ = θG + ω·τ
    peft_merged = PeftModel.from_pretrained(copy.deepcopy(pre), src).merge_and_unload().state_dict()
    pre_sd, gen_sd, ours = pre.state_dict(), gen.state_dict(), state_of(out)
    changed = 0
    for k, v in ours.items():
        expected = gen_sd[k] + omega * (peft_merged[k] - pre_sd[k])
        assert torch.allclose(v, expected, atol=1e-6, rtol=0), k
        changed += not torch.equal(v, gen_sd[k])
    assert changed > 0
    record = json.loads((out / "lora_merge.json").read_text())
    assert record["packs"][0]["rule"] == "size_ratio"


def test_pack_create_without_base_records_adapter_base(adapter):
    tmp, *_r, src = adapter
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "org/pico-base"
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    res = create(src, "--name", "tone", "--instances", 5, "--out", tmp / "p")
    assert res.exit_code == 0, res.output
    assert load_pack(tmp / "p").manifest.base_model.name_or_path == "org/pico-base"


def test_dense_tau_file(tmp_path, pico_dirs):
    _pre, gen, _pre_dir, _gen_dir = pico_dirs
    src = tmp_path / "tau"
    src.mkdir()
    save_file({k: torch.full_like(v, 0.01) for k, v in gen.state_dict().items() if k.endswith("q_proj.weight")},
              src / "task_vector.safetensors")
    res = create(src, "--name", "dense", "--instances", 7, "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert load_pack(tmp_path / "p").kind == "dense"


@pytest.mark.parametrize("case", ["pickle", "dora", "nan", "shape", "instances", "overlap", "name", "config", "already"])
def test_bad_adapters_refused(adapter, case):
    tmp, pre, _gen, pre_dir, _gen_dir, src = adapter
    out = tmp / "p"
    args = [src, "--name", "tone", "--instances", 10, "--out", out]
    needles: tuple[str, ...]
    if case == "pickle":
        (src / "adapter_model.safetensors").unlink()
        torch.save({"x": torch.zeros(1)}, src / "adapter_model.bin")
        needles = ("pickle", "safetensors")
    elif case == "dora":
        shutil.rmtree(src)
        make_lora_pack(pre, pre_dir, src, "x", manifest=False, target_modules=["q_proj"], use_dora=True)
        needles = ("DoRA",)
    elif case == "nan":
        w = load_file(src / "adapter_model.safetensors")
        k = sorted(w)[0]
        w[k][0, 0] = float("nan")
        save_file(w, src / "adapter_model.safetensors")
        needles = ("NaN",)
    elif case == "shape":
        other = save_model(__import__("lora_merge.pico", fromlist=["pico_model"]).pico_model("llama", hidden=48),
                           tmp / "bigger")
        args += ["--base", other]
        needles = ("shape",)
    elif case == "instances":
        args[4] = 0
        needles = ("--instances",)
    elif case == "overlap":
        args[-1] = out = src / "inside"
        needles = ("input",)
    elif case == "name":
        args[2] = "../evil"
        needles = ("--name",)
    elif case == "already":
        (src / "skill.json").write_text("{}")
        needles = ("already a skill pack",)
    else:
        (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": "eight"}))
        needles = ("r",)
    before = sorted(p.name for p in src.iterdir())
    assert_refused(create(*args), out, *needles)
    assert sorted(p.name for p in src.iterdir()) == before


def test_recommended_omega_is_used_and_named_and_rule_size_ignores_it(adapter):
    tmp, *_r, pre_dir, gen_dir, src = adapter
    reg = tmp / "adapters"
    assert create(src, "--name", "tone", "--instances", 300, "--adapters-dir", reg).exit_code == 0
    from lora_merge.pack.skillpack import RecommendedWeight, write_manifest

    m = load_pack(reg / "tone").manifest
    write_manifest(reg / "tone", m.model_copy(update={"recommended_weight": RecommendedWeight(
        value=0.4, rule="max_skill_within_general_drop", evidence="test")}))
    base = ["fold", "--general", gen_dir, "--adapters-dir", reg, "--adapters", "tone", "--general-size", 1000]
    res = CliRunner().invoke(main, [*map(str, base), "--out", str(tmp / "rec")])
    assert res.exit_code == 0, res.output
    assert "ω = 0.4 (recommended by sweep" in res.output
    packs = json.loads((tmp / "rec" / "lora_merge.json").read_text())["packs"]
    assert (packs[0]["weight"], packs[0]["rule"]) == (0.4, "recommended")
    res = CliRunner().invoke(main, [*map(str, base), "--rule", "size", "--out", str(tmp / "size")])
    assert res.exit_code == 0, res.output
    assert "|D|/|G| = 300/1000" in res.output and "recommended by sweep" not in res.output
    packs = json.loads((tmp / "size" / "lora_merge.json").read_text())["packs"]
    assert (packs[0]["weight"], packs[0]["rule"]) == (0.3, "size_ratio")
    res = CliRunner().invoke(main, [*map(str, base), "--weights", "0.7", "--out", str(tmp / "given")])
    assert "ω = 0.7 (given)" in res.output
