"""The fold against PEFT's own merge (the oracle), for three architectures."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of, token_batch

CASES = {
    "llama": dict(target_modules="all-linear"),
    "gpt2": dict(target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    "qwen2": dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]),
}


@pytest.mark.parametrize("arch", sorted(CASES))
def test_fold_equals_peft_merge_and_unload(tmp_path, arch):
    model = pico_model(arch)
    base_dir = save_model(model, tmp_path / "base")
    pack = make_lora_pack(model, base_dir, tmp_path / "packs" / "skill", "skill", seed=7, **CASES[arch])
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), pack).eval()
    x = token_batch()
    with torch.no_grad():
        plain, adapted = model(x).logits, peft_model(x).logits
    # first prove the adapter matters, or the comparison below proves nothing
    assert (plain - adapted).abs().max() > 1e-3

    out = tmp_path / "merged"
    fold(FoldRequest(general=base_dir, packs=[str(pack)], out=out, weights=[1.0], progress=False))
    merged_ref = peft_model.merge_and_unload().state_dict()
    ours = state_of(out)
    for k, v in ours.items():
        assert torch.allclose(v, merged_ref[k], atol=1e-5, rtol=0), k
    folded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(folded(x).logits, adapted, atol=1e-4)


def test_qwen_biases_are_kept_and_lora_bias_folds(tmp_path):
    model = pico_model("qwen2")
    with torch.no_grad():  # non-zero biases so that a dropped bias would show
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    base_dir = save_model(model, tmp_path / "base")
    pack = make_lora_pack(model, base_dir, tmp_path / "p", "p", seed=3, target_modules=["q_proj", "k_proj"], lora_bias=True)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), pack).eval()
    ref = peft_model.merge_and_unload().state_dict()
    out = tmp_path / "merged"
    fold(FoldRequest(general=base_dir, packs=[str(pack)], out=out, weights=[1.0], progress=False))
    ours = state_of(out)
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.bias"], model.state_dict()["model.layers.0.self_attn.q_proj.bias"])
    for k in ours:
        assert torch.allclose(ours[k], ref[k], atol=1e-5, rtol=0), k


def test_rslora_and_rank_alpha_patterns(tmp_path):
    model = pico_model("llama")
    base_dir = save_model(model, tmp_path / "base")
    for name, kw in {
        "rs": dict(use_rslora=True, r=8, lora_alpha=4),
        "pat": dict(r=4, lora_alpha=8, rank_pattern={"layers.0.self_attn.q_proj": 2},
                    alpha_pattern={"v_proj": 32, "layers.1.mlp.down_proj": 3}),
    }.items():
        pack = make_lora_pack(model, base_dir, tmp_path / name, name, seed=5, **kw)
        ref = PeftModel.from_pretrained(copy.deepcopy(model), pack).merge_and_unload().state_dict()
        out = tmp_path / f"merged-{name}"
        fold(FoldRequest(general=base_dir, packs=[str(pack)], out=out, weights=[1.0], progress=False))
        ours = state_of(out)
        for k in ours:
            assert torch.allclose(ours[k], ref[k], atol=1e-5, rtol=0), (name, k)


@pytest.mark.parametrize("targets", [["lm_head"], ["embed_tokens"], ["embed_tokens", "lm_head", "q_proj"]])
def test_tied_embeddings(tmp_path, targets):
    model = pico_model("llama", tie=True)
    base_dir = save_model(model, tmp_path / "base")
    pack = make_lora_pack(model, base_dir, tmp_path / "p", "p", seed=9, target_modules=targets)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), pack).eval()
    x = token_batch()
    with torch.no_grad():
        assert (model(x).logits - peft_model(x).logits).abs().max() > 1e-3
        adapted = peft_model(x).logits
    out = tmp_path / "merged"
    fold(FoldRequest(general=base_dir, packs=[str(pack)], out=out, weights=[1.0], progress=False))
    folded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(folded(x).logits, adapted, atol=1e-4)
    # the adapted model used the pair untied when a pack touched one side; the output must too
    touched_one_side = ("lm_head" in targets) != ("embed_tokens" in targets)
    if touched_one_side:
        assert not torch.equal(folded.lm_head.weight, folded.model.embed_tokens.weight)


def test_prefixes_differ_between_adapter_and_checkpoint(tmp_path):
    """An adapter made on GPT2LMHeadModel (transformer.h.0…) folds into a checkpoint storing h.0…."""
    from lora_merge.io.shards import save_tensors

    model = pico_model("gpt2")
    pack = make_lora_pack(model, None, tmp_path / "p", "p", seed=2, target_modules=["c_attn"], fan_in_fan_out=True)
    bare = tmp_path / "bare"
    bare.mkdir()
    state = {k.removeprefix("transformer."): v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_tensors(bare / "model.safetensors", state, {"format": "pt"})
    fold(FoldRequest(general=bare, packs=[str(pack)], out=tmp_path / "m", weights=[1.0], progress=False))
    ref = PeftModel.from_pretrained(copy.deepcopy(model), pack).merge_and_unload().state_dict()
    ours = state_of(tmp_path / "m")
    assert set(ours) == set(state)
    for k in ours:
        assert torch.allclose(ours[k], ref["transformer." + k], atol=1e-5, rtol=0), k
    assert not torch.equal(ours["h.0.attn.c_attn.weight"], state["h.0.attn.c_attn.weight"])
