"""Only true deltas fold (issue 35, item 3): every field of PEFT's LoraConfig folds exactly, held to PEFT's own
merge (or its forward pass), or is refused by name; initialisations that rewrite θpre are refused unless saved
converted."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing

import pytest
import torch
from click.testing import CliRunner
from peft import EvaConfig, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from lora_merge.cli import main
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pack.adapter_config import FOLDED, INIT_KEEPS_BASE, INIT_REWRITES_BASE, NO_EFFECT, REFUSED
from lora_merge.pico import pico_model, randomize_lora, save_model, state_of, token_batch

QKV = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A pico Qwen2 with non-zero biases (a dropped bias update shows) and its folder."""
    root = tmp_path_factory.mktemp("fields")
    model = pico_model("qwen2")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    return root, model, save_model(model, root / "pre")


def trained(model, out, seed=3, **kw):
    """A PEFT adapter made with ``kw``, every trainable tensor moved off its initial value, saved."""
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, **kw))
    randomize_lora(pm, seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for n, p in pm.named_parameters():
            if p.requires_grad and "lora_" not in n:  # trained biases and modules_to_save
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    pm.save_pretrained(out)
    return out


def peft_merged(model, adapter) -> dict[str, torch.Tensor]:
    return PeftModel.from_pretrained(copy.deepcopy(model), adapter).merge_and_unload().state_dict()


def fold_into(pre_dir, adapter, out, **kw) -> dict[str, torch.Tensor]:
    fold(FoldRequest(general=pre_dir, packs=[str(adapter)], out=out, weights=[1.0], progress=False, **kw))
    return state_of(out)


def assert_matches(ours, ref, model):
    base = model.state_dict()
    assert max((ours[k] - base[k]).abs().max().item() for k in ours) > 1e-2  # the adapter changes something
    for k in ours:
        assert torch.allclose(ours[k], ref[k], atol=1e-5, rtol=0), k


def test_every_lora_config_field_and_init_value_is_classified():
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    assert fields <= NO_EFFECT | FOLDED | set(REFUSED), fields - (NO_EFFECT | FOLDED | set(REFUSED))
    hint = typing.get_type_hints(LoraConfig)["init_lora_weights"]
    values = {v for arg in typing.get_args(hint) for v in typing.get_args(arg)}
    known = set(INIT_KEEPS_BASE) | {v for v in values if v.startswith(INIT_REWRITES_BASE)}
    assert values <= known | {"pissa_niter_[number of iters]"}, values - known


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_an_adapter_saved_without_conversion_is_refused_and_saved_converted_folds_as_peft_merges(qwen, tmp_path, init):
    _root, model, pre_dir = qwen
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=QKV, init_lora_weights=init))
    pm.peft_config["default"].init_lora_weights = True  # the initial adapter, as PEFT's conversion needs it
    pm.save_pretrained(tmp_path / "init")
    pm.peft_config["default"].init_lora_weights = init
    with torch.no_grad():  # "training"
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.05)
    pm.save_pretrained(tmp_path / "reg" / "raw")
    pm.save_pretrained(tmp_path / "reg" / "conv", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    res = CliRunner().invoke(main, ["fold", "--general", str(pre_dir), "--adapters", "raw", "--adapters-dir",
                                    str(tmp_path / "reg"), "--weights", "1", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and f"init_lora_weights '{init}' rewrites the base weights" in res.output, res.output
    assert "path_initial_model_for_weight_conversion" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".lora_merge*"))
    # The oracle: PEFT's own model from the unconverted adapter (it re-runs the init on θpre, then loads A, B).
    ref = peft_merged(model, tmp_path / "reg" / "raw")
    assert_matches(fold_into(pre_dir, tmp_path / "reg" / "conv", tmp_path / "f"), ref, model)


@pytest.mark.parametrize("init", [False, "gaussian", "eva", "orthogonal", "mica"])
def test_initialisations_that_keep_the_base_fold_as_peft_merges(qwen, tmp_path, init):
    _root, model, pre_dir = qwen
    extra = {"eva_config": EvaConfig()} if init == "eva" else {}
    adapter = trained(model, tmp_path / "a", target_modules=QKV, init_lora_weights=init, **extra)
    assert_matches(fold_into(pre_dir, adapter, tmp_path / "f"), peft_merged(model, adapter), model)


@pytest.mark.parametrize("kw", [
    dict(bias="all"), dict(bias="lora_only"), dict(layers_to_transform=[1], lora_dropout=0.1),
    dict(target_modules="all-linear", exclude_modules=["v_proj"]), dict(modules_to_save=["lm_head"]),
], ids=["bias-all", "bias-lora-only", "layers", "exclude", "modules-to-save"])
def test_fields_that_shape_the_delta_fold_as_peft_merges(qwen, tmp_path, kw):
    """bias all/lora_only save an adapted module's trained bias as MODULE.base_layer.bias: a replacement,
    folded with --base (it was dropped before issue 35)."""
    _root, model, pre_dir = qwen
    adapter = trained(model, tmp_path / "a", **{"target_modules": QKV, **kw})
    assert_matches(fold_into(pre_dir, adapter, tmp_path / "f", base=pre_dir), peft_merged(model, adapter), model)


def test_ensure_weight_tying_folds_as_peft_computes(tmp_path):
    """With tied embeddings PEFT ties the head's adapter to the embedding's; its merge_and_unload adds the one
    delta twice to the shared weight, so the oracle is PEFT's forward pass, which the folded model reproduces."""
    model = pico_model("llama", tie=True)
    pre_dir = save_model(model, tmp_path / "pre")
    adapter = trained(model, tmp_path / "a", target_modules=["lm_head", "q_proj"], ensure_weight_tying=True)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), adapter).eval()
    fold_into(pre_dir, adapter, tmp_path / "f")
    folded = AutoModelForCausalLM.from_pretrained(tmp_path / "f").eval()
    x = token_batch()
    with torch.no_grad():
        adapted = peft_model(x).logits
        assert (adapted - model(x).logits).abs().max() > 1e-3
        assert torch.allclose(folded(x).logits, adapted, atol=1e-4)


REFUSALS = [(name, 1 if name != "alora_invocation_tokens" else [5, 6]) for name in REFUSED] + [
    ("init_lora_weights", "corda"), ("init_lora_weights", "loftq"), ("init_lora_weights", "lora_ga"),
    ("init_lora_weights", "pissa_niter_16"), ("init_lora_weights", "shiny"), ("some_future_field", {"on": 1}),
]


@pytest.mark.parametrize(("field", "value"), REFUSALS, ids=[f"{f}={v}" for f, v in REFUSALS])
def test_fields_that_make_the_weights_no_delta_of_the_base_are_refused_by_name(qwen, tmp_path, field, value):
    root, model, pre_dir = qwen
    plain = root / "plain"
    if not plain.exists():
        trained(model, plain, target_modules=QKV)
    reg = tmp_path / "reg"
    (reg / "p").mkdir(parents=True)
    (reg / "p" / "adapter_model.safetensors").write_bytes((plain / "adapter_model.safetensors").read_bytes())
    config = json.loads((plain / "adapter_config.json").read_text())
    (reg / "p" / "adapter_config.json").write_text(json.dumps({**config, field: value}))
    res = CliRunner().invoke(main, ["fold", "--general", str(pre_dir), "--adapters", "p", "--adapters-dir", str(reg),
                                    "--weights", "1", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and field in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_an_unknown_field_left_empty_folds(qwen, tmp_path):
    _root, model, pre_dir = qwen
    adapter = trained(model, tmp_path / "a", target_modules=QKV)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "some_future_field": None}))
    assert_matches(fold_into(pre_dir, adapter, tmp_path / "f"), peft_merged(model, adapter), model)
