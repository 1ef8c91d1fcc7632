"""The fold plan: one place binds packs (by a unique id), chooses ω and checks them, for every caller.

Each test here is a drift bug the callers had when each set its own inputs up.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.report import EvalReport, MetricScore
from lora_merge.evaluate.sweep import SweepRequest, run_sweep
from lora_merge.fold.plan import plan_fold
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pack.skillpack import load_manifest, write_manifest
from lora_merge.pico import make_lora_pack, perturbed, pico_model, pico_tokenizer, state_of

KEY = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"


@pytest.fixture
def twins(tmp_path):
    """A general model and two different packs that are both named `skill`, in folders a/ and b/."""
    pre = pico_model("llama")
    pre.save_pretrained(tmp_path / "pre")
    perturbed(pre, seed=1).save_pretrained(tmp_path / "general")
    pico_tokenizer().save_pretrained(tmp_path / "general")
    reg = tmp_path / "adapters"
    make_lora_pack(pre, tmp_path / "pre", reg / "a", "skill", seed=2, instances=100)
    make_lora_pack(pre, tmp_path / "pre", reg / "b", "skill", seed=3, instances=100)
    ev = tmp_path / "evals"
    ev.mkdir()
    (ev / "general.jsonl").write_text(json.dumps({"prompt": "two plus two is", "completion": "four"}) + "\n")
    (ev / "skill.jsonl").write_text(json.dumps({"prompt": "make a bomb", "completion": "sorry no"}) + "\n")
    return SimpleNamespace(root=tmp_path, reg=reg, general=tmp_path / "general", ev=ev)


def _fold(w, out, **kw):
    kw = {"weights": [0.5, 0.5], **kw}
    return fold(FoldRequest(general=w.general, packs=["a", "b"], adapters_dir=w.reg, out=out, progress=False, **kw))


def test_fewer_weights_than_packs_is_refused_by_the_library_call(twins):
    with pytest.raises(LoraMergeError, match="1 value.* for 2 packs"):
        _fold(twins, twins.root / "out", weights=[0.5])
    with pytest.raises(LoraMergeError, match=r"3 value\(s\) for 2 packs"):
        _fold(twins, twins.root / "out", weights=[0.5, 0.5, 0.5])
    assert not (twins.root / "out").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_is_refused(twins, value):
    with pytest.raises(LoraMergeError, match="finite"):
        _fold(twins, twins.root / "out", weights=[0.5, value])


def test_plan_binds_packs_by_a_unique_id_not_their_name(twins):
    plan = plan_fold(FoldRequest(general=twins.general, packs=["a", "b"], adapters_dir=twins.reg,
                                 out=twins.root / "out", weights=[0.5, 0.25]))
    assert [t.name for t in plan.terms] == ["skill", "skill"]
    assert len({t.id for t in plan.terms}) == 2 and len({t.label for t in plan.terms}) == 2
    assert [t.weight.value for t in plan.terms] == [0.5, 0.25]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_sweep_folds_both_packs_named_alike_as_the_fold_does(twins, mode):
    """Two packs both named `skill`: the sweep's ω=0.5 point is the fold of a and b at 0.5 each."""
    oracle = state_of(_fold(twins, twins.root / "folded").out)
    seen = {}

    def scorer(model, tok, point):
        seen[point.label] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return EvalReport(point.label, [MetricScore("general", "g", "exact", 1, 50.0),
                                        MetricScore("skill", "s", "exact", 1, 50.0)])

    run_sweep(SweepRequest(general=twins.general, packs=["a", "b"], adapters_dir=twins.reg,
                           evals={"general": [twins.ev / "general.jsonl"], "skill": [twins.ev / "skill.jsonl"]},
                           out=twins.root / "sweep", weights=[0.5], general_size=400, mode=mode, progress=False),
              scorer=scorer)
    got = seen["ω=0.5"]
    for k, v in oracle.items():
        torch.testing.assert_close(got[k].float(), v.float(), atol=1e-5, rtol=1e-4, msg=k)
    doc = json.loads((twins.root / "sweep" / "results.json").read_text())
    assert len([c for c in doc["rows"][0] if c.startswith("omega[")]) == 2  # one column per pack


def test_in_memory_sweep_refuses_a_pack_holding_nan(twins):
    pack = twins.reg / "b"
    tensors = load_file(pack / "adapter_model.safetensors")
    tensors[KEY] = tensors[KEY].clone()
    tensors[KEY][0, 0] = float("nan")
    save_file(tensors, pack / "adapter_model.safetensors")
    write_manifest(pack, load_manifest(pack / "skill.json"))  # rehash: only the value is wrong
    with pytest.raises(LoraMergeError, match="NaN"):
        run_sweep(SweepRequest(general=twins.general, packs=["b"], adapters_dir=twins.reg,
                               evals={"general": [twins.ev / "general.jsonl"], "skill": [twins.ev / "skill.jsonl"]},
                               out=twins.root / "sweep", weights=[0.5], general_size=400, mode="memory",
                               progress=False),
                  scorer=lambda m, t, p: EvalReport(p.label, [MetricScore("general", "g", "exact", 1, 1.0),
                                                              MetricScore("skill", "s", "exact", 1, 1.0)]))
    assert not (twins.root / "sweep").exists()
