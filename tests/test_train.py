"""Skill training (PTM): LoRA, QLoRA and full packs against PEFT, the fold, and independent counts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from lora_merge.core.errors import LoraMergeError
from lora_merge.pack.skillpack import load_pack
from lora_merge.train.training_recipe import load_training_recipe

PROMPTS = [(f"add {i} and {i + 3}: ", f"{2 * i + 3}!") for i in range(24)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """θpre (pico Llama + a character tokenizer with a chat template) and a 24-row skill file."""
    from lora_merge.pico import pico_char_tokenizer, pico_model, save_model

    root = tmp_path_factory.mktemp("train")
    pre = save_model(pico_model("llama", hidden=32), root / "pre")
    pico_char_tokenizer(pre)
    data = root / "skill.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PROMPTS))
    return root, pre, data


def recipe(world, tmp_path, **kw):
    _, pre, data = world
    values = dict(base=pre, data=data, name="adder", adapters_dir=tmp_path / "adapters", run_dir=tmp_path / "run",
                  max_steps=4, batch_size=8, lr=2e-2, rank=4, alpha=8, dropout=0.0, logging_steps=1, progress=False)
    values.update(kw)
    return load_training_recipe(None, values)


def test_lora_pack_loads_in_peft_changes_logits_and_folds_like_merge_and_unload(world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_merge.fold.write import FoldRequest, fold
    from lora_merge.pico import state_of, token_batch
    from lora_merge.train.run import train_skill

    _, pre, data = world
    res = train_skill(recipe(world, tmp_path))
    assert res.out == tmp_path / "adapters" / "adder" and res.steps == 4
    pack = load_pack(res.out)  # verifies the sha256 of the weights
    m = pack.manifest
    assert m.kind == "lora" and m.data.instances == len(PROMPTS) == res.instances
    # the character tokenizer gives one token per character, plus the eos TRL appends to each completion
    assert m.data.tokens == sum(len(p) + len(c) + 1 for p, c in PROMPTS)
    assert (m.training.rank, m.training.alpha, m.training.steps, m.training.method) == (4, 8, 4, "lora")
    assert m.training.final_loss is not None and m.training.model_extra["library_versions"]["peft"]
    assert m.base_model.name_or_path == str(pre) and m.base_model.shapes_sha256
    assert not any((tmp_path / "adapters").glob(".*"))  # no temporary folder left behind

    base = AutoModelForCausalLM.from_pretrained(pre).eval()
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), res.out).eval()
    x = token_batch(vocab=100)
    with torch.no_grad():
        assert (base(x).logits - peft_model(x).logits).abs().max() > 1e-3
    merged = peft_model.merge_and_unload().state_dict()
    out = tmp_path / "folded"
    fold(FoldRequest(general=pre, packs=["adder"], adapters_dir=tmp_path / "adapters", out=out, weights=[1.0],
                     progress=False))
    ours = state_of(out)
    assert set(ours) <= set(merged)
    for k, v in ours.items():
        assert torch.allclose(v, merged[k], atol=1e-5, rtol=0), k


def test_full_pack_is_the_dense_difference_of_the_trained_model(world, tmp_path):
    from transformers import TrainerCallback

    from lora_merge.io.tensors import SafetensorsFile
    from lora_merge.pico import state_of
    from lora_merge.train.run import train_skill

    seen = {}

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    res = train_skill(recipe(world, tmp_path, mode="full", max_steps=3, lr=1e-3), callbacks=[Capture()])
    pack = load_pack(res.out)
    assert pack.kind == "dense" and pack.manifest.training.rank is None
    before = state_of(world[1])
    deltas = SafetensorsFile(pack.weights_file)
    assert sorted(deltas.keys()) == sorted(before)
    moved = 0
    for k in before:
        assert torch.allclose(deltas.get(k), seen[k] - before[k], atol=1e-6, rtol=0), k
        moved += bool(deltas.get(k).abs().max() > 0)
    assert moved > 0


def test_qlora_trains_on_cpu_and_records_its_quantisation(world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_merge.train.run import train_skill

    res = train_skill(recipe(world, tmp_path, mode="qlora", max_steps=2, precision="bf16",
                             optim="paged_adamw_8bit"))
    m = load_pack(res.out).manifest
    assert m.training.quantization == "bnb-4bit-nf4-double" and m.training.method == "qlora"
    if not torch.cuda.is_available():
        assert any("float32" in w for w in res.warnings) and any("adamw_torch" in w for w in res.warnings)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world[1]), res.out)
    assert any("lora_B" in n and p.abs().max() > 0 for n, p in peft_model.named_parameters())


@pytest.mark.parametrize("fmt", ["text", "chat"])
def test_prompt_tokens_are_masked_in_the_collated_batch(world, tmp_path, fmt):
    from transformers import AutoTokenizer

    from lora_merge.train.data import load_data, mix
    from lora_merge.train.run import build_trainer, hardware, plan_run

    if fmt == "text":
        rows = [{"prompt": p, "completion": c} for p, c in PROMPTS[:4]]
    else:
        rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]} for p, c in PROMPTS[:4]]
    r = recipe(world, tmp_path, data=rows)
    tok = AutoTokenizer.from_pretrained(world[1])
    trainer = build_trainer(r, plan_run(r), mix({"skill": load_data(rows)}), hardware(r))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for i, (p, c) in enumerate(PROMPTS[:4]):
        if fmt == "text":
            n_prompt, n_completion = len(tok(p)["input_ids"]), len(c) + 1  # + eos
        else:
            n_prompt = len(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=True)["input_ids"])
            n_completion = len(c) + 2  # eos and the template's newline after the assistant turn
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert (labels[:n_prompt] == -100).all()
        assert torch.equal(labels[n_prompt:n_prompt + n_completion], ids[n_prompt:n_prompt + n_completion])
        assert (labels[n_prompt + n_completion:] == -100).all()  # padding


def test_group_by_length_batches_rows_of_similar_length_and_keeps_every_row(world, tmp_path):
    """The option cuts padding against the random batches of the same seed, and one epoch still sees each row once."""
    from lora_merge.train.data import load_data, mix
    from lora_merge.train.run import build_trainer, hardware, plan_run

    rows = [{"prompt": "x" * (1 + (7 * i) % 40) + ": ", "completion": "y"} for i in range(40)]

    def epoch_lengths(grouped: bool) -> list[list[int]]:
        r = recipe(world, tmp_path, data=rows, batch_size=4, group_by_length=grouped)
        trainer = build_trainer(r, plan_run(r), mix({"skill": load_data(rows)}), hardware(r))
        return [b["attention_mask"].sum(dim=1).tolist() for b in trainer.get_train_dataloader()]

    def padding(batches: list[list[int]]) -> int:
        return sum(max(b) * len(b) - sum(b) for b in batches)

    random_batches, grouped_batches = epoch_lengths(False), epoch_lengths(True)
    every_row = sorted(n for b in random_batches for n in b)
    assert sorted(n for b in grouped_batches for n in b) == every_row and len(every_row) == len(rows)
    assert padding(grouped_batches) < padding(random_batches) / 2


def test_the_pack_records_how_its_batches_were_made(world, tmp_path):
    from lora_merge.train.run import train_skill

    for grouped in (True, False):
        res = train_skill(recipe(world, tmp_path / str(grouped), max_steps=1, group_by_length=grouped))
        assert load_pack(res.out).manifest.training.group_by_length is grouped


def test_chat_data_needs_a_chat_template_and_nothing_is_written(world, tmp_path):
    from lora_merge.pico import pico_char_tokenizer
    from lora_merge.train.run import train_skill

    bare = tmp_path / "bare_tok"
    pico_char_tokenizer(bare, chat_template=None)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    with pytest.raises(LoraMergeError, match="no chat template"):
        train_skill(recipe(world, tmp_path, data=rows, tokenizer=bare))
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_existing_pack_is_refused_before_training(world, tmp_path):
    from lora_merge.train.run import train_skill

    (tmp_path / "adapters" / "adder").mkdir(parents=True)
    with pytest.raises(LoraMergeError, match="already exists; pass --force"):
        train_skill(recipe(world, tmp_path))
    assert not (tmp_path / "run").exists()


def test_missing_data_file_and_base(world, tmp_path):
    from lora_merge.train.run import train_skill

    with pytest.raises(LoraMergeError, match="does not exist"):
        train_skill(recipe(world, tmp_path, data=tmp_path / "nope.jsonl"))
    with pytest.raises(LoraMergeError, match=r"base model .*missing_model does not exist"):
        train_skill(recipe(world, tmp_path, base=Path(tmp_path / "missing_model")))
