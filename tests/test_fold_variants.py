"""The paper's variants against their formulas computed by hand."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pico import make_lora_pack, perturbed, pico_model, save_model, state_of

PEFT = "base_model.model."


def hand_tau(pack_dir, theta_pre: dict, scale: float) -> dict[str, torch.Tensor]:
    """τD for every weight: scale·B·A where the adapter has factors, 0 elsewhere."""
    w = load_file(str(pack_dir / "adapter_model.safetensors"))
    tau = {k: torch.zeros_like(v) for k, v in theta_pre.items()}
    for key in w:
        if key.endswith("lora_A.weight"):
            module = key[len(PEFT):-len(".lora_A.weight")]
            tau[module + ".weight"] = scale * (w[f"{PEFT}{module}.lora_B.weight"] @ w[key])
    return tau


@pytest.fixture
def setup(tmp_path, pico_dirs):
    pre, gen, pre_dir, gen_dir = pico_dirs
    pack = make_lora_pack(pre, pre_dir, tmp_path / "reg" / "coding", "coding", seed=4, instances=300,
                          r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    cft_dir = save_model(perturbed(gen, seed=9, scale=0.03), tmp_path / "cft")
    return pre_dir, gen_dir, pack, cft_dir


def test_linear_interp_is_its_formula(tmp_path, setup):
    pre_dir, gen_dir, pack, _ = setup
    out = tmp_path / "li"
    res = fold(FoldRequest(general=gen_dir, packs=[str(pack)], out=out, base=pre_dir, weights=[0.3],
                           method="linear_interp", progress=False))
    theta_pre, theta_g, ours = state_of(pre_dir), state_of(gen_dir), state_of(out)
    tau_d = hand_tau(pack, theta_pre, 8 / 4)
    for k in theta_g:
        expected = theta_pre[k] + 0.3 * tau_d[k] + 0.7 * (theta_g[k] - theta_pre[k])
        assert torch.allclose(ours[k], expected, atol=1e-6, rtol=0), k
    assert res.tensors_changed == len(theta_g)
    record = json.loads((out / "lora_merge.json").read_text())
    assert record["method"] == "linear_interp" and "(1 − ω)·τG" in record["formula"]
    assert "(1 − ω)·τG" in (out / "README.md").read_text()


def test_linear_interp_size_rule_is_d_over_d_plus_g(tmp_path, setup):
    pre_dir, gen_dir, pack, _ = setup
    res = fold(FoldRequest(general=gen_dir, packs=["coding"], adapters_dir=tmp_path / "reg", out=tmp_path / "m",
                           base=pre_dir, general_size=900, method="linear_interp", progress=False))
    w = 300 / (300 + 900)
    assert res.packs[0].weight.value == pytest.approx(w) and res.packs[0].weight.rule == "size_fraction"
    theta_pre, theta_g, ours = state_of(pre_dir), state_of(gen_dir), state_of(tmp_path / "m")
    k = "model.layers.1.mlp.up_proj.weight"
    expected = theta_pre[k] + w * hand_tau(pack, theta_pre, 2.0)[k] + (1 - w) * (theta_g[k] - theta_pre[k])
    assert torch.allclose(ours[k], expected, atol=1e-6)


def test_wise_ft_is_its_formula_and_needs_no_base(tmp_path, setup):
    _pre_dir, gen_dir, _pack, cft_dir = setup
    out = tmp_path / "wise"
    fold(FoldRequest(general=gen_dir, packs=[], cft=cft_dir, out=out, weights=[0.25], method="wise_ft", progress=False))
    theta_g, theta_cft, ours = state_of(gen_dir), state_of(cft_dir), state_of(out)
    for k in theta_g:
        assert torch.allclose(ours[k], theta_g[k] + 0.25 * (theta_cft[k] - theta_g[k]), atol=1e-6, rtol=0), k
    assert json.loads((out / "lora_merge.json").read_text())["formula"] == "θ = θG + ω·(θCFT − θG)"
    # size rule: |D| from θCFT's lora_merge.json, |G| given
    (cft_dir / "lora_merge.json").write_text(json.dumps({"data": {"instances": 100}}))
    res = fold(FoldRequest(general=gen_dir, packs=[], cft=cft_dir, out=tmp_path / "w2", general_size=300,
                           method="wise_ft", progress=False))
    assert res.packs[0].weight.value == pytest.approx(0.25)


def test_variant_mistakes_are_clear_and_write_nothing(tmp_path, setup):
    pre_dir, gen_dir, pack, cft_dir = setup
    out = tmp_path / "never"
    cases = [
        (dict(packs=[str(pack)], method="linear_interp", weights=[0.5]), "needs --base"),
        (dict(packs=[], method="wise_ft", weights=[0.5]), "needs --cft"),
        (dict(packs=[str(pack)], cft=cft_dir, method="wise_ft", weights=[0.5]), "takes no skill packs"),
        (dict(packs=[], cft=pre_dir, method="wise_ft"), "ω is not given"),
        (dict(packs=[str(pack)], cft=cft_dir, weights=[0.5]), "only used by --method wise_ft"),
        (dict(packs=[], cft=save_model(pico_model("llama", hidden=64), tmp_path / "big"), method="wise_ft",
              weights=[0.5]), "same size"),
    ]
    for kw, match in cases:
        with pytest.raises(LoraMergeError, match=match):
            fold(FoldRequest(general=gen_dir, out=out, progress=False, **kw))
        assert not out.exists() and not list(tmp_path.glob(".*never*"))


def test_cli_linear_interp_and_wise_ft(tmp_path, setup):
    from lora_merge.cli import main

    pre_dir, gen_dir, _pack, cft_dir = setup
    common = ["fold", "--general", str(gen_dir), "--weights", "0.4"]
    ok = CliRunner().invoke(main, common + ["--adapters", "coding", "--adapters-dir", str(tmp_path / "reg"),
                                            "--method", "linear_interp", "--base", str(pre_dir),
                                            "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    no_base = CliRunner().invoke(main, common + ["--adapters", "coding", "--adapters-dir", str(tmp_path / "reg"),
                                                 "--method", "linear_interp", "--out", str(tmp_path / "b")])
    assert no_base.exit_code == 2 and "needs --base" in no_base.output and not (tmp_path / "b").exists()
    wise = CliRunner().invoke(main, common + ["--method", "wise_ft", "--cft", str(cft_dir), "--out", str(tmp_path / "c")])
    assert wise.exit_code == 0, wise.output
    theta_g, theta_cft, ours = state_of(gen_dir), state_of(cft_dir), state_of(tmp_path / "c")
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.allclose(ours[k], theta_g[k] + 0.4 * (theta_cft[k] - theta_g[k]), atol=1e-6)
