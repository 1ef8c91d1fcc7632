"""`pack merge`: folding the merged pack equals folding its sources (exact for linear, within the reported SVD
error for the other rules), and PEFT loads the merged adapter."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.plan import load_packs
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pack.merge import PackMergeRequest, merge_packs
from lora_merge.pico import make_lora_pack, perturbed, pico_model, save_model, state_of

G = 200


@pytest.fixture
def world(tmp_path):
    """θpre, θG and two LoRA packs of different ranks, modules and sizes |D|."""
    pre = pico_model("llama")
    pre_dir = save_model(pre, tmp_path / "pre")
    gen_dir = save_model(perturbed(pre, seed=1), tmp_path / "general")
    a = make_lora_pack(pre, pre_dir, tmp_path / "packs" / "a", "a", seed=1, instances=30)
    b = make_lora_pack(pre, pre_dir, tmp_path / "packs" / "b", "b", seed=2, instances=90, r=8, lora_alpha=16,
                       target_modules=["q_proj", "v_proj", "down_proj"])
    return pre, pre_dir, gen_dir, a, b


def _fold(gen_dir, packs, out, **kw):
    fold(FoldRequest(general=gen_dir, packs=[str(p) for p in packs], out=out, progress=False, **kw))
    return state_of(out)


def _merge(packs, out, **kw):
    return merge_packs(PackMergeRequest(packs=load_packs([str(p) for p in packs], out.parent), out=out,
                                        name=out.name, **kw))


def _peft_delta(pre, pack) -> dict[str, torch.Tensor]:
    """ΔW by PEFT's own merge: merge_and_unload(θpre + adapter) − θpre."""
    merged = PeftModel.from_pretrained(copy.deepcopy(pre), pack).merge_and_unload().state_dict()
    return {k: merged[k] - v for k, v in pre.state_dict().items()}


def test_linear_merge_is_exact_and_loads_in_peft(tmp_path, world):
    pre, pre_dir, gen_dir, a, b = world
    res = _merge([a, b], tmp_path / "ab")
    assert res.kind == "lora" and res.instances == 120 and res.errors == []
    assert [w.value for w in res.weights] == [0.25, 0.75]
    # PEFT (the oracle) loads the merged adapter, and its ΔW is the weighted sum of the sources' ΔW.
    da, db, dm = _peft_delta(pre, a), _peft_delta(pre, b), _peft_delta(pre, tmp_path / "ab")
    assert max(d.abs().max() for d in da.values()) > 1e-3
    for k in dm:
        assert torch.allclose(dm[k], 0.25 * da[k] + 0.75 * db[k], atol=1e-6), k
    # Folding the merged pack by the size rule (|D| = 120) equals folding the sources at |Dk|/|G|.
    sources = _fold(gen_dir, [a, b], tmp_path / "f1", general_size=G)
    merged = _fold(gen_dir, [tmp_path / "ab"], tmp_path / "f2", general_size=G)
    general = state_of(gen_dir)
    assert any(not torch.equal(sources[k], general[k]) for k in general)
    for k in sources:
        assert torch.allclose(merged[k], sources[k], atol=1e-6, rtol=0), k
    manifest = json.loads((tmp_path / "ab" / "skill.json").read_text())
    assert [s["name"] for s in manifest["training"]["merge"]["sources"]] == ["a", "b"]
    assert manifest["data"]["instances"] == 120


def test_linear_merge_conv1d_with_explicit_weights(tmp_path):
    pre = pico_model("gpt2")
    pre_dir = save_model(pre, tmp_path / "pre")
    kw = dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    a = make_lora_pack(pre, pre_dir, tmp_path / "a", "a", seed=3, **kw)
    b = make_lora_pack(pre, pre_dir, tmp_path / "b", "b", seed=4, r=2, lora_alpha=4, **kw)
    _merge([a, b], tmp_path / "ab", weights=[1.0, -0.5])
    sources = _fold(pre_dir, [a, b], tmp_path / "f1", weights=[1.0, -0.5])
    merged = _fold(pre_dir, [tmp_path / "ab"], tmp_path / "f2", weights=[1.0])
    for k in sources:
        assert torch.allclose(merged[k], sources[k], atol=1e-6, rtol=0), k
    dm, da, db = _peft_delta(pre, tmp_path / "ab"), _peft_delta(pre, a), _peft_delta(pre, b)
    for k in dm:
        assert torch.allclose(dm[k], da[k] - 0.5 * db[k], atol=1e-6), k


@pytest.mark.parametrize("method", ["ties", "dare_ties", "magnitude_prune"])
def test_rules_through_svd_match_the_fold_within_the_reported_error(tmp_path, world, method):
    _pre, _pre_dir, gen_dir, a, b = world
    opts = dict(method=method, density=0.5, seed=3)
    sources = _fold(gen_dir, [a, b], tmp_path / "f1", weights=[0.25, 0.75], **opts)
    general = state_of(gen_dir)
    for rank, out in [(64, "full"), (2, "cut")]:  # rank ≥ every dimension: exact; rank 2: lossy, reported
        res = _merge([a, b], tmp_path / out, rank=rank, **opts)
        merged = _fold(gen_dir, [tmp_path / out], tmp_path / f"f-{out}", weights=[1.0])
        diff = sum(((merged[k] - sources[k]) ** 2).sum() for k in general).sqrt().item()
        delta = sum(((sources[k] - general[k]) ** 2).sum() for k in general).sqrt().item()
        assert delta > 1e-3
        if rank == 64:
            assert res.overall_error < 1e-5 and diff / delta < 1e-5
        else:
            assert res.overall_error > 0.05
            assert diff / delta == pytest.approx(res.overall_error, rel=1e-3, abs=1e-5)


def test_dense_and_lora_sources_give_an_exact_dense_pack(tmp_path, world):
    from lora_merge.pack.extract import ExtractRequest, extract_pack

    pre, pre_dir, gen_dir, a, _b = world
    full = save_model(perturbed(pre, seed=5, scale=0.01), tmp_path / "full")
    extract_pack(ExtractRequest(model=full, base=pre_dir, name="d", out=tmp_path / "d", instances=50, progress=False))
    res = _merge([a, tmp_path / "d"], tmp_path / "ad", base=pre_dir)
    assert res.kind == "dense" and [w.value for w in res.weights] == [30 / 80, 50 / 80]
    sources = _fold(gen_dir, [a, tmp_path / "d"], tmp_path / "f1", general_size=G)
    merged = _fold(gen_dir, [tmp_path / "ad"], tmp_path / "f2", general_size=G)
    for k in sources:
        assert torch.allclose(merged[k], sources[k], atol=1e-6, rtol=0), k


def test_bad_requests_are_refused_and_write_nothing(tmp_path, world):
    pre, pre_dir, _gen, a, b = world
    out = tmp_path / "ab"
    with pytest.raises(LoraMergeError, match="at least two"):
        _merge([a], out)
    with pytest.raises(LoraMergeError, match="2 packs"):
        _merge([a, b], out, weights=[1.0])
    with pytest.raises(LoraMergeError, match="exact at rank"):
        _merge([a, b], out, rank=4)
    with pytest.raises(LoraMergeError, match="lies inside the input"):
        _merge([a, b], a / "sub")
    plain = make_lora_pack(pre, pre_dir, tmp_path / "plain", "plain", manifest=False)
    with pytest.raises(LoraMergeError, match="pass --weights"):
        _merge([a, plain], out)
    other = pico_model("llama", hidden=64)
    wide = make_lora_pack(other, None, tmp_path / "wide", "wide", seed=1)
    with pytest.raises(LoraMergeError, match="shape"):
        _merge([a, wide], out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_merge_then_refuses_existing_output(tmp_path, world):
    _pre, _pre_dir, _gen, a, b = world
    runner = CliRunner()
    r = runner.invoke(main, ["pack", "merge", "--adapters", f"{a},{b}", "--out", str(tmp_path / "ab")])
    assert r.exit_code == 0, r.output
    assert "ω = 0.25" in r.output and "|D| = 120" in r.output
    r = runner.invoke(main, ["pack", "verify", str(tmp_path / "ab")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["pack", "merge", "--adapters", f"{a},{b}", "--out", str(tmp_path / "ab")])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(main, ["pack", "merge", "--adapters", f"{a},{b}", "--method", "ties", "--rank", "3", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0 and "relative error" in r.output, r.output
