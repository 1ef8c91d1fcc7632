"""The fold against hand-computed formulas: θ = θG + Σ ωk·scale·B·A."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pico import make_lora_pack, state_of

PEFT = "base_model.model."


def hand_delta(pack_dir, module: str, scale: float) -> torch.Tensor:
    w = load_file(str(pack_dir / "adapter_model.safetensors"))
    return scale * (w[f"{PEFT}{module}.lora_B.weight"] @ w[f"{PEFT}{module}.lora_A.weight"])


def test_fold_into_different_general_model_is_hand_formula(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    a = make_lora_pack(pre, pre_dir, tmp_path / "a", "a", seed=1, r=4, lora_alpha=8, target_modules=["q_proj"])
    b = make_lora_pack(pre, pre_dir, tmp_path / "b", "b", seed=2, r=2, lora_alpha=6, target_modules=["q_proj", "v_proj"])
    out = tmp_path / "m"
    fold(FoldRequest(general=gen_dir, packs=[str(a), str(b)], out=out, weights=[0.3, 0.7], progress=False))
    theta_g, ours = state_of(gen_dir), state_of(out)
    q = "model.layers.0.self_attn.q_proj"
    expected_q = theta_g[q + ".weight"] + 0.3 * hand_delta(a, q, 8 / 4) + 0.7 * hand_delta(b, q, 6 / 2)
    assert torch.allclose(ours[q + ".weight"], expected_q, atol=1e-6)
    v = "model.layers.1.self_attn.v_proj"
    assert torch.allclose(ours[v + ".weight"], theta_g[v + ".weight"] + 0.7 * hand_delta(b, v, 3.0), atol=1e-6)
    untouched = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(ours[untouched], theta_g[untouched])


def test_two_packs_add_linearly(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    a = make_lora_pack(pre, pre_dir, tmp_path / "a", "a", seed=1)
    b = make_lora_pack(pre, pre_dir, tmp_path / "b", "b", seed=2)
    for name, packs, w in [("a", [a], [0.4]), ("b", [b], [0.9]), ("ab", [a, b], [0.4, 0.9])]:
        fold(FoldRequest(general=gen_dir, packs=[str(p) for p in packs], out=tmp_path / f"m-{name}", weights=w,
                         progress=False))
    g, sa, sb, sab = (state_of(d) for d in (gen_dir, tmp_path / "m-a", tmp_path / "m-b", tmp_path / "m-ab"))
    for k in g:
        assert torch.allclose(sab[k] - g[k], (sa[k] - g[k]) + (sb[k] - g[k]), atol=1e-6), k


def test_zero_weight_reproduces_general_exactly(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    a = make_lora_pack(pre, pre_dir, tmp_path / "a", "a", seed=1)
    fold(FoldRequest(general=gen_dir, packs=[str(a)], out=tmp_path / "m", weights=[0.0], progress=False))
    g, m = state_of(gen_dir), state_of(tmp_path / "m")
    assert g.keys() == m.keys() and all(torch.equal(g[k], m[k]) for k in g)


def test_size_ratio_weight_from_manifests(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    a = make_lora_pack(pre, pre_dir, tmp_path / "reg" / "safety", "safety", seed=1, instances=66161,
                       target_modules=["q_proj"])
    res = fold(FoldRequest(general=gen_dir, packs=["safety"], adapters_dir=tmp_path / "reg", out=tmp_path / "m",
                           general_size=275464, progress=False))
    assert res.packs[0].weight.value == pytest.approx(66161 / 275464)
    q = "model.layers.0.self_attn.q_proj.weight"
    expected = state_of(gen_dir)[q] + (66161 / 275464) * hand_delta(a, q[:-7], 2.0)
    assert torch.allclose(state_of(tmp_path / "m")[q], expected, atol=1e-6)
    record = json.loads((tmp_path / "m" / "lora_merge.json").read_text())
    assert record["packs"][0]["rule"] == "size_ratio"
    assert record["packs"][0]["sha256"]["adapter_model.safetensors"] == json.loads((a / "skill.json").read_text())["files"]["adapter_model.safetensors"]
    assert "66161/275464" in (tmp_path / "m" / "README.md").read_text()


def test_general_size_from_manifest_beside_general(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    make_lora_pack(pre, pre_dir, tmp_path / "p", "p", seed=1, instances=50)
    (gen_dir / "lora_merge.json").write_text(json.dumps({"data": {"instances": 200}}))
    res = fold(FoldRequest(general=gen_dir, packs=[str(tmp_path / "p")], out=tmp_path / "m", progress=False))
    assert res.packs[0].weight.value == pytest.approx(0.25)


def test_modules_to_save_needs_base_and_folds_saved_minus_base(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    # modules_to_save trains a full copy of the final norm; its task vector is saved − θpre
    pack = make_lora_pack(pre, pre_dir, tmp_path / "p", "p", seed=3, target_modules=["q_proj"], modules_to_save=["norm"])
    saved = load_file(str(pack / "adapter_model.safetensors"))
    norm_keys = [k for k in saved if k.endswith("model.norm.weight")]
    assert norm_keys, "PEFT should save the replaced norm"
    with torch.no_grad():  # make the saved copy differ from θpre (a fresh copy equals it)
        saved[norm_keys[0]] = saved[norm_keys[0]] + 0.5
    from safetensors.torch import save_file

    save_file(saved, str(pack / "adapter_model.safetensors"))
    with pytest.raises(LoraMergeError, match="--base"):
        fold(FoldRequest(general=gen_dir, packs=[str(pack)], out=tmp_path / "m", weights=[1.0], verify=False, progress=False))
    assert not (tmp_path / "m").exists()
    fold(FoldRequest(general=gen_dir, packs=[str(pack)], out=tmp_path / "m", weights=[0.5], base=pre_dir, verify=False,
                     progress=False))
    g, p, m = state_of(gen_dir), state_of(pre_dir), state_of(tmp_path / "m")
    expected = g["model.norm.weight"] + 0.5 * (saved[norm_keys[0]] - p["model.norm.weight"])
    assert torch.allclose(m["model.norm.weight"], expected, atol=1e-6)


def test_plain_peft_adapter_without_manifest_needs_explicit_weights(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    pack = make_lora_pack(pre, pre_dir, tmp_path / "plain", "plain", seed=1, manifest=False)
    with pytest.raises(LoraMergeError, match="--weights"):
        fold(FoldRequest(general=gen_dir, packs=[str(pack)], out=tmp_path / "m", general_size=100, progress=False))
    res = fold(FoldRequest(general=gen_dir, packs=[str(pack)], out=tmp_path / "m", weights=[0.5], progress=False))
    assert res.packs[0].instances is None and res.tensors_changed > 0


def test_sharded_output_loads_and_matches_single(tmp_path, pico_dirs):
    from transformers import AutoModelForCausalLM

    pre, _gen, pre_dir, gen_dir = pico_dirs
    a = make_lora_pack(pre, pre_dir, tmp_path / "a", "a", seed=1)
    fold(FoldRequest(general=gen_dir, packs=[str(a)], out=tmp_path / "one", weights=[0.5], progress=False))
    res = fold(FoldRequest(general=gen_dir, packs=[str(a)], out=tmp_path / "sh", weights=[0.5], max_shard_size="20KB",
                           dtype="bfloat16", progress=False))
    assert len(res.shards) > 1 and (tmp_path / "sh" / "model.safetensors.index.json").exists()
    one, sh = state_of(tmp_path / "one"), state_of(tmp_path / "sh")
    assert all(sh[k].dtype == torch.bfloat16 and torch.equal(sh[k], one[k].to(torch.bfloat16)) for k in one)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sh")
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    for f in ("config.json", "generation_config.json"):
        assert (tmp_path / "sh" / f).exists() == (gen_dir / f).exists()
