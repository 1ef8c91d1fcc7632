"""Training recipe key ``freeze``: full-parameter training that keeps the embeddings (and/or the output head) at θpre."""

from __future__ import annotations

import json

import pytest
import torch

from lora_merge.core.errors import LoraMergeError
from lora_merge.pack.skillpack import load_pack
from lora_merge.train.training_recipe import load_training_recipe

ROWS = [{"prompt": f"add {i} and {i + 3}: ", "completion": f"{2 * i + 3}!"} for i in range(16)]
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Two θpre folders (untied and tied output head), each with a character tokenizer, and a skill file."""
    from lora_merge.pico import pico_char_tokenizer, pico_model, save_model

    root = tmp_path_factory.mktemp("freeze")
    out = {}
    for tie in (False, True):
        folder = save_model(pico_model("llama", hidden=32, tie=tie), root / f"pre-tie{int(tie)}")
        pico_char_tokenizer(folder)
        out[tie] = folder
    data = root / "skill.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return out, data


def recipe(bases, tmp_path, tie=False, **kw):
    folders, data = bases
    values = dict(base=folders[tie], data=data, name="adder", mode="full", adapters_dir=tmp_path / "adapters",
                  run_dir=tmp_path / "run", max_steps=3, batch_size=8, lr=1e-2, weight_decay=0.1, logging_steps=1,
                  progress=False)
    values.update(kw)
    return load_training_recipe(None, values)


class Capture:
    """The trained weights as the trainer leaves them (an independent look at what the pack should hold)."""

    def __init__(self):
        from transformers import TrainerCallback

        self.state: dict[str, torch.Tensor] = {}
        outer = self

        class _Cb(TrainerCallback):
            def on_train_end(self, args, state, control, model=None, **kw):
                outer.state.update({k: v.detach().clone() for k, v in model.state_dict().items()})

        self.callback = _Cb()


@pytest.mark.parametrize(("freeze", "frozen"), [(["embeddings"], {EMBED}), (["embeddings", "lm_head"], {EMBED, HEAD})])
def test_full_ptm_keeps_frozen_weights_bit_identical_and_their_tau_zero(bases, tmp_path, freeze, frozen):
    from lora_merge.io.tensors import SafetensorsFile
    from lora_merge.pico import state_of
    from lora_merge.train.run import train_skill

    cap = Capture()
    res = train_skill(recipe(bases, tmp_path, freeze=freeze), callbacks=[cap.callback])
    before = state_of(bases[0][False])
    tau = SafetensorsFile(load_pack(res.out).weights_file)
    for k, w in before.items():
        if k in frozen:
            assert torch.equal(cap.state[k], w), k  # bit-identical, weight decay included
            assert torch.count_nonzero(tau.get(k)) == 0, k
        else:
            assert not torch.equal(cap.state[k], w), f"{k} did not train"
            assert tau.get(k).abs().max() > 0, k
    assert load_pack(res.out).manifest.training.model_extra["freeze"] == freeze


def test_tied_head_is_frozen_with_the_embeddings_and_the_model_folder_records_it(bases, tmp_path):
    from lora_merge.pico import state_of
    from lora_merge.rules.omega import GENERAL_MANIFEST
    from lora_merge.train.run import train_skill

    out = tmp_path / "general"
    res = train_skill(recipe(bases, tmp_path, tie=True, strategy="general", freeze="embeddings", out=out))
    before, after = state_of(bases[0][True]), state_of(out)
    assert torch.equal(after[EMBED], before[EMBED])
    assert not torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    record = json.loads((out / GENERAL_MANIFEST).read_text())
    assert record["training"]["freeze"] == ["embeddings"] and res.steps == 3


def test_without_freeze_the_embeddings_train_and_nothing_is_recorded_frozen(bases, tmp_path):
    from lora_merge.io.tensors import SafetensorsFile
    from lora_merge.pico import state_of
    from lora_merge.train.run import train_skill

    res = train_skill(recipe(bases, tmp_path, max_steps=2))
    tau = SafetensorsFile(load_pack(res.out).weights_file)
    assert tau.get(EMBED).abs().max() > 0 and set(state_of(bases[0][False])) == set(tau.keys())
    assert load_pack(res.out).manifest.training.model_extra["freeze"] == []


@pytest.mark.parametrize("value", [["embedding"], "embeddings,bias", [["embeddings"]], 3])
def test_unknown_freeze_target_is_a_clear_error(bases, tmp_path, value):
    with pytest.raises(LoraMergeError, match="freeze"):
        recipe(bases, tmp_path, freeze=value)


def test_freeze_in_lora_mode_is_refused_before_anything_is_written(bases, tmp_path):
    from lora_merge.train.run import train_skill

    with pytest.raises(LoraMergeError, match="applies to --mode full"):
        train_skill(recipe(bases, tmp_path, mode="lora", freeze=["embeddings"]))
    assert not (tmp_path / "adapters").exists() and not (tmp_path / "run").exists()


def test_cli_freeze_flag_overrides_the_recipe(bases, tmp_path):
    from click.testing import CliRunner

    from lora_merge.cli import main

    folders, data = bases
    args = ["train", "--base", str(folders[False]), "--data", str(data), "--name", "adder", "--mode", "full",
            "--adapters-dir", str(tmp_path / "adapters"), "--run-dir", str(tmp_path / "run"), "--max-steps", "2",
            "--batch-size", "8", "--no-progress"]
    bad = CliRunner().invoke(main, [*args, "--freeze", "embedings"])
    assert bad.exit_code == 2 and "unknown freeze target 'embedings'" in bad.output
    ok = CliRunner().invoke(main, [*args, "--freeze", "embeddings", "--freeze", "lm_head"])
    assert ok.exit_code == 0, ok.output
    tau = load_pack(tmp_path / "adapters" / "adder")
    assert tau.manifest.training.model_extra["freeze"] == ["embeddings", "lm_head"]


def test_miniature_study_applies_each_sections_freeze_to_its_full_fine_tunes(tmp_path):
    from lora_merge.miniature.config import load_config
    from lora_merge.miniature.study import Study

    cfg = load_config(None, overrides={"out": str(tmp_path), "general": {"lr": 1e-3, "epochs": 1, "freeze": ["lm_head"]},
                                       "skill": {"lr": 1e-3, "epochs": 1, "freeze": ["embeddings"]}})
    s = Study(cfg)
    assert s._recipe("g", strategy="general", mode="full").freeze == ["lm_head"]
    assert s._recipe("r", strategy="rt", mode="full").freeze == ["lm_head"]
    assert s._recipe("c", strategy="cft", mode="full").freeze == ["embeddings"]
    assert s._recipe("p", strategy="ptm", mode="full").freeze == ["embeddings"]
    assert s._recipe("l", strategy="ptm", mode="lora").freeze == []  # LoRA packs train no embeddings anyway
    with pytest.raises(LoraMergeError, match="skill"):
        load_config(None, overrides={"skill": {"lr": 1e-3, "epochs": 1, "freeze": ["bias"]}})
