"""Interference diagnostics against dense computations by hand (PEFT's merged deltas as the oracle)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel

from lora_merge.core.errors import LoraMergeError
from lora_merge.io.fingerprint import read_config
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.extract import ExtractRequest, extract_pack
from lora_merge.pack.interference import interference, layer_of, layout_from_packs
from lora_merge.pack.skillpack import load_pack
from lora_merge.pack.task_vector import TargetModel, TaskVector
from lora_merge.pico import make_lora_pack, perturbed, save_model


def peft_tau(pre, pack) -> dict[str, torch.Tensor]:
    merged = PeftModel.from_pretrained(copy.deepcopy(pre), pack).merge_and_unload().state_dict()
    return {k: merged[k] - v for k, v in pre.state_dict().items()}


def by_hand(taus: list[dict[str, torch.Tensor]], keys=None):
    """Cosine matrix and sign-conflict rates over the given keys, from dense deltas."""
    keys = keys or list(taus[0])
    flat = [torch.cat([t[k].reshape(-1) for k in keys]).double() for t in taus]
    k = len(flat)
    cos = torch.tensor([[float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm())) for j in range(k)] for i in range(k)])
    rate = {}
    for i in range(k):
        for j in range(i + 1, k):
            both = (flat[i] != 0) & (flat[j] != 0)
            rate[i, j] = float(((flat[i] * flat[j] < 0) & both).sum() / both.sum())
    return cos, rate, [float(f.norm()) for f in flat]


@pytest.fixture
def packs(tmp_path, pico_dirs):
    pre, _gen, pre_dir, _gen_dir = pico_dirs
    specs = {  # overlapping targets, an embedding LoRA (transposed factors) and different ranks
        "safety": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"]),
        "coding": dict(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj", "embed_tokens", "lm_head"]),
    }
    made = [make_lora_pack(pre, pre_dir, tmp_path / "reg" / n, n, seed=i + 1, **kw)
            for i, (n, kw) in enumerate(specs.items())]
    return pre, pre_dir, made


def vectors_for(pre_dir, pack_dirs):
    base = WeightSet.open(pre_dir)
    target = TargetModel.from_weights(base, read_config(pre_dir))
    return [TaskVector.from_pack(load_pack(p), target, base) for p in pack_dirs]


def test_self_and_negation(packs):
    _pre, pre_dir, made = packs
    (tv,) = vectors_for(pre_dir, made[:1])
    rep = interference([tv, tv, -tv], ["t", "t again", "−t"])
    cos = rep.overall.cosine()
    assert cos[0, 1].item() == pytest.approx(1.0, abs=1e-9) and cos[0, 2].item() == pytest.approx(-1.0, abs=1e-9)
    rate = rep.overall.conflict_rate()
    assert rate[0, 1].item() == 0.0 and rate[0, 2].item() == 1.0
    for g in rep.layers.values():
        assert g.cosine()[0, 2].item() == pytest.approx(-1.0, abs=1e-9)


def test_factor_route_equals_dense_and_the_hand_computation(packs):
    pre, pre_dir, made = packs
    vectors = vectors_for(pre_dir, made)
    fast = interference(vectors, route="factors")
    slow = interference(vectors, route="dense")
    assert torch.allclose(fast.overall.gram, slow.overall.gram, rtol=1e-5, atol=1e-9)
    for label in slow.layers:
        assert torch.allclose(fast.layers[label].gram, slow.layers[label].gram, rtol=1e-5, atol=1e-9), label
    taus = [peft_tau(pre, p) for p in made]
    cos, rate, norms = by_hand(taus)
    assert torch.allclose(fast.overall.cosine(), cos.double(), atol=1e-5)
    assert fast.overall.conflict_rate()[0, 1].item() == pytest.approx(rate[0, 1], abs=1e-6)
    assert fast.overall.norms().tolist() == pytest.approx(norms, rel=1e-5)
    layer1 = [k for k in taus[0] if layer_of(k) == "layer 1"]
    cos1, rate1, _ = by_hand(taus, layer1)
    assert fast.layers["layer 1"].cosine()[0, 1].item() == pytest.approx(cos1[0, 1].item(), abs=1e-5)
    assert fast.layers["layer 1"].conflict_rate()[0, 1].item() == pytest.approx(rate1[0, 1], abs=1e-6)
    assert list(fast.layers) == ["layer 0", "layer 1", "other"]


def test_dense_pack_beside_lora_pack(tmp_path, packs):
    pre, pre_dir, made = packs
    ft_dir = save_model(perturbed(pre, seed=7, scale=0.03), tmp_path / "ft")
    extract_pack(ExtractRequest(model=ft_dir, base=pre_dir, name="full", out=tmp_path / "full", progress=False))
    rep = interference(vectors_for(pre_dir, [made[0], tmp_path / "full"]))
    ft, base = WeightSet.open(ft_dir), WeightSet.open(pre_dir)
    dense = {k: ft.get(k).float() - base.get(k).float() for k in ft.keys()}
    cos, rate, _ = by_hand([peft_tau(pre, made[0]), dense])
    assert rep.overall.cosine()[0, 1].item() == pytest.approx(cos[0, 1].item(), abs=1e-5)
    assert rep.overall.conflict_rate()[0, 1].item() == pytest.approx(rate[0, 1], abs=1e-6)


def test_packs_for_different_shapes_are_refused(tmp_path, packs):
    from lora_merge.pico import pico_model

    _pre, _pre_dir, made = packs
    big = pico_model("llama", hidden=64)
    other = make_lora_pack(big, None, tmp_path / "big", "big", seed=3, target_modules=["q_proj"])
    with pytest.raises(LoraMergeError, match="different sizes"):
        layout_from_packs([load_pack(made[0]), load_pack(other)])


def test_cli_table_heatmap_and_json(tmp_path, packs):
    from lora_merge.cli import main

    _pre, pre_dir, made = packs
    png, js = tmp_path / "out" / "int.png", tmp_path / "int.json"
    args = ["pack", "interference", "--adapters", "safety,coding", "--adapters-dir", str(tmp_path / "reg"), "--out", str(png),
            "--json", str(js)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "safety·coding" in res.output and "overall" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert data["packs"] == ["safety", "coding"] and math.isclose(data["overall"]["cosine"][0][0], 1.0, abs_tol=1e-9)
    with_base = CliRunner().invoke(main, args[:-2] + ["--base", str(pre_dir), "--no-signs"])
    assert with_base.exit_code == 0, with_base.output
    assert "n/a" in with_base.output
