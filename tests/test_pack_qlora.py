"""QLoRA packs: the 4-bit settings and residuals recorded, `pack inspect --quantization-error`, the fold's warning.

Oracles: bitsandbytes' own quantize/dequantize of θpre (with its default block size) for the residual, and
PEFT's merge_and_unload of the pack for ΔW.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from test_train import recipe, world  # noqa: F401 (world is a fixture: θpre with a character tokenizer, a skill file)

from lora_merge.cli import main
from lora_merge.pack.skillpack import load_pack


@pytest.fixture(scope="module")
def qlora_pack(world, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    from lora_merge.train.run import train_skill

    tmp = tmp_path_factory.mktemp("qlora")
    return train_skill(recipe(world, tmp, mode="qlora", max_steps=2)).out


def oracle_residual(weight: torch.Tensor) -> float:
    """‖W − dequant(Q4(W))‖ by bitsandbytes itself: NF4, its default block size, double quantisation."""
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(weight.float(), compress_statistics=True, quant_type="nf4")
    return float(torch.linalg.vector_norm((weight.float() - bnbf.dequantize_4bit(packed, state)).double()))


def peft_deltas(pre_dir, pack_dir) -> dict[str, torch.Tensor]:
    """ΔW per weight: PEFT's merged model minus θpre."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(pre_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, pack_dir).merge_and_unload().state_dict()
    return {k: merged[k] - before[k] for k in before if not torch.equal(merged[k], before[k])}


def test_qlora_pack_records_the_4bit_settings_it_was_trained_on(world, qlora_pack):  # noqa: F811
    import bitsandbytes.functional as bnbf

    from lora_merge.pico import state_of

    q = load_pack(qlora_pack).manifest.training.quantization_config
    _packed, default_state = bnbf.quantize_4bit(torch.ones(256), quant_type="nf4")
    on_cpu = not torch.cuda.is_available()
    assert (q.method, q.bits, q.quant_type, q.double_quant) == ("bitsandbytes", 4, "nf4", True)  # the recipe's
    assert q.block_size == default_state.blocksize  # bitsandbytes' default, which transformers uses
    if on_cpu:
        assert q.compute_dtype == q.quant_dtype == "float32"  # train loads a 4-bit base in float32 on a CPU
    pre = state_of(world[1])
    linear = {k for k in pre if k.endswith("_proj.weight")}
    assert set(q.residual_norms) == linear  # every adapted Linear, and nothing else (no embedding, no head)
    for k, v in q.residual_norms.items():
        assert v == pytest.approx(oracle_residual(pre[k]), rel=1e-5), k


def test_pack_inspect_prints_the_quantization_error_per_layer(world, qlora_pack):  # noqa: F811
    from lora_merge.pico import state_of

    pre = state_of(world[1])
    deltas = peft_deltas(world[1], qlora_pack)
    res = CliRunner().invoke(main, ["pack", "inspect", str(qlora_pack), "--quantization-error", str(world[1]),
                                    "--json", "-"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    assert report["assumed"] is False and report["settings"]["quant_type"] == "nf4"
    assert {r["layer"] for r in report["layers"]} == set(deltas)
    for r in report["layers"]:
        delta = float(torch.linalg.vector_norm(deltas[r["layer"]].double()))
        assert r["delta_norm"] == pytest.approx(delta, rel=1e-4)
        assert r["residual_norm"] == pytest.approx(oracle_residual(pre[r["layer"]]), rel=1e-5)
        assert r["ratio"] == pytest.approx(r["residual_norm"] / delta, rel=1e-4)
    text = CliRunner().invoke(main, ["pack", "inspect", str(qlora_pack), "--quantization-error", str(world[1])]).output
    worst = max(report["layers"], key=lambda r: r["ratio"])
    assert f"max {worst['ratio']:.1f}" in text and worst["layer"] in text and "as trained" in text
    plain = CliRunner().invoke(main, ["pack", "inspect", str(qlora_pack)]).output
    assert "4-bit base            bitsandbytes nf4, block 64" in plain and "residual recorded for 14 layers" in plain


def test_a_lora_pack_is_measured_as_if_quantised_and_says_so(built):
    res = CliRunner().invoke(main, ["pack", "inspect", str(built.pack), "--quantization-error", str(built.pre_dir)])
    assert res.exit_code == 0, res.output
    assert "assumed: the pack was not trained in 4 bits" in res.output


def test_fold_warns_naming_the_layers_where_the_residual_dwarfs_the_update(world, qlora_pack, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    from lora_merge.pack import quant_error
    from lora_merge.pico import state_of

    pre = state_of(world[1])
    deltas = peft_deltas(world[1], qlora_pack)
    ratios = {k: oracle_residual(pre[k]) / float(torch.linalg.vector_norm(d.double())) for k, d in deltas.items()}
    args = ["fold", "--general", str(world[1]), "--adapters", str(qlora_pack), "--weights", "1"]
    quiet = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert quiet.exit_code == 0 and "4-bit base" not in quiet.output  # pico ratios are far under the threshold
    threshold = sorted(ratios.values())[len(ratios) // 2]  # half the layers over it
    monkeypatch.setattr(quant_error, "RATIO_WARN", threshold)
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    over = sorted((k for k, r in ratios.items() if r > threshold), key=lambda k: -ratios[k])
    assert f"in {len(over)}/{len(ratios)} layers" in res.output
    assert f"{over[0]} {ratios[over[0]]:.3g}×" in res.output
    warnings = json.loads((tmp_path / "b" / "lora_merge.json").read_text())["warnings"]
    assert any("trained on a 4-bit base (nf4, block 64)" in w for w in warnings)
    assert math.isfinite(threshold)


@pytest.mark.parametrize("field, value", [("quant_dtype", "__class__"), ("quant_type", "int8"), ("block_size", -64),
                                          ("residual_norms", {"model.layers.0.mlp.up_proj.weight": -1.0})])
def test_a_bad_quantization_record_is_an_invalid_manifest(qlora_pack, tmp_path, field, value):
    import shutil

    pack = tmp_path / "p"
    shutil.copytree(qlora_pack, pack)
    manifest = json.loads((pack / "skill.json").read_text())
    manifest["training"]["quantization_config"][field] = value
    (pack / "skill.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(main, ["pack", "inspect", str(pack), "--quantization-error", str(pack)])
    assert res.exit_code == 2 and f"training.quantization_config.{field}" in res.output, res.output
