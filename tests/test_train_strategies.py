"""CFT (with and without replay), RT and general runs; resume, Ctrl-C, CLI errors and accelerate launch."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_train import PROMPTS, recipe, world  # noqa: F401 (world is a fixture)

from lora_merge.core.errors import LoraMergeError
from lora_merge.rules.omega import GENERAL_MANIFEST, general_size_from_folder

ROOT = Path(__file__).resolve().parent.parent
GENERAL_ROWS = [{"prompt": f"say {w}: ", "completion": w} for w in ("yes", "no", "maybe", "ok", "fine", "sure") * 3]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_general_then_cft_with_and_without_replay_then_rt(world, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from lora_merge.pico import state_of
    from lora_merge.train.run import train_skill

    _, pre, data = world
    g_file = write_rows(tmp_path / "general.jsonl", GENERAL_ROWS)
    gen = train_skill(recipe(world, tmp_path, strategy="general", data=g_file, name="gen", out=tmp_path / "theta_g",
                             max_steps=2))
    assert general_size_from_folder(gen.out) == len(GENERAL_ROWS)  # what fold reads as |G|
    rec = json.loads((gen.out / GENERAL_MANIFEST).read_text())
    assert rec["role"] == "general" and rec["lineage"]["start_model"] == str(pre)
    assert rec["cost"]["steps"] == 2 and rec["data"]["tokens"] > 0
    assert set(state_of(gen.out)) == set(state_of(pre))
    assert any(not torch.equal(a, state_of(pre)[k]) for k, a in state_of(gen.out).items())  # LoRA merged in

    cft = train_skill(recipe(world, tmp_path, strategy="cft", general=gen.out, name="cft", out=tmp_path / "cft",
                             max_steps=2, run_dir=tmp_path / "r1"))
    rec = json.loads((cft.out / GENERAL_MANIFEST).read_text())
    assert rec["role"] == "cft" and rec["lineage"]["start_role"] == "general"
    assert rec["data"]["instances"] == len(PROMPTS) and rec["data"]["sources"]["skill"]["instances"] == len(PROMPTS)

    replay = train_skill(recipe(world, tmp_path, strategy="cft", general=gen.out, name="cftr", out=tmp_path / "cftr",
                                replay=g_file, replay_ratio=0.5, max_steps=2, run_dir=tmp_path / "r2"))
    assert replay.counts == {"skill": len(PROMPTS), "replay": len(PROMPTS) // 2}
    assert json.loads((replay.out / GENERAL_MANIFEST).read_text())["data"]["instances"] == len(PROMPTS) * 3 // 2

    rt = train_skill(recipe(world, tmp_path, strategy="rt", general_data=g_file, name="rt", out=tmp_path / "rt",
                            mode="full", lr=1e-3, max_steps=2, run_dir=tmp_path / "r3"))
    rec = json.loads((rt.out / GENERAL_MANIFEST).read_text())
    assert rec["role"] == "rt" and rec["data"]["instances"] == len(PROMPTS) + len(GENERAL_ROWS)
    assert rec["training"]["method"] == "full"
    AutoModelForCausalLM.from_pretrained(rt.out)  # a loadable model folder


def test_strategy_inputs_are_checked(world, tmp_path):  # noqa: F811
    from lora_merge.train.run import train_skill

    with pytest.raises(LoraMergeError, match="--general-data"):
        train_skill(recipe(world, tmp_path, strategy="rt"))
    with pytest.raises(LoraMergeError, match="no general model"):
        train_skill(recipe(world, tmp_path, strategy="cft"))
    with pytest.raises(LoraMergeError, match="--strategy cft"):
        train_skill(recipe(world, tmp_path, replay=world[2]))


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_from_it(world, tmp_path):  # noqa: F811
    from transformers import TrainerCallback

    from lora_merge.train.run import train_skill

    steps_seen: list[int] = []

    class Watch(TrainerCallback):
        def __init__(self, interrupt_at=None):
            self.interrupt_at = interrupt_at

        def on_step_end(self, args, state, control, **kw):
            steps_seen.append(state.global_step)
            if state.global_step == self.interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    r = recipe(world, tmp_path, max_steps=5, save_steps=100)
    with pytest.raises(LoraMergeError, match="interrupted at step 2.*--resume"):
        train_skill(r, callbacks=[Watch(interrupt_at=2)])
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())
    with pytest.raises(LoraMergeError, match="--resume"):  # a fresh start would silently discard it
        train_skill(r)

    steps_seen.clear()
    res = train_skill(r.model_copy(update={"resume": True}), callbacks=[Watch()])
    assert res.resumed_from_step == 2 and res.steps == 5
    assert steps_seen == [3, 4, 5]
    assert (tmp_path / "adapters" / "adder" / "skill.json").is_file()


def cli(*args):
    from lora_merge.cli import main

    return CliRunner().invoke(main, list(map(str, args)))


@pytest.mark.parametrize("case", ["malformed", "no_template", "no_base", "unknown_key"])
def test_cli_bad_input_is_one_clear_error_and_leaves_nothing(world, tmp_path, case):  # noqa: F811
    from lora_merge.pico import pico_char_tokenizer

    _, pre, data = world
    args = ["train", "--base", pre, "--data", data, "--name", "x", "--adapters-dir", tmp_path / "adapters",
            "--run-dir", tmp_path / "run", "--max-steps", 1, "--no-progress"]
    if case == "malformed":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n")
        args[4], expect = bad, "bad.jsonl: row 2"
    elif case == "no_template":
        chat = write_rows(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                                  {"role": "assistant", "content": "b"}]}])
        pico_char_tokenizer(tmp_path / "tok", chat_template=None)
        args[4], expect = chat, "no chat template"
        args += ["--tokenizer", tmp_path / "tok"]
    elif case == "no_base":
        args[2], expect = tmp_path / "nowhere", "does not exist"
    else:
        cfg = tmp_path / "r.yaml"
        cfg.write_text("mode: lora\nranks: 8\n")
        args += ["--config", cfg]
        expect = "ranks: unknown key"
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert expect in result.output and "Traceback" not in result.output
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_cli_set_rejects_unknown_keys(tmp_path):
    result = cli("train", "--set", "learning_rate=0.1")
    assert result.exit_code == 2 and "unknown recipe key" in result.output
