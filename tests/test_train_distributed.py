"""Training on two processes (`accelerate launch --num_processes 2 --cpu`, DDP over gloo): one pack, written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_train import PROMPTS, world  # noqa: F401 (world is a fixture)

ROOT = Path(__file__).resolve().parent.parent


def test_two_process_ddp_training_writes_one_pack_that_peft_loads(world, tmp_path):  # noqa: F811
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_merge.pack.skillpack import load_pack

    _, pre, data = world
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "cli.py"), "train",
         "--config", ROOT / "configs/train/lora-cpu.yaml", "--base", pre, "--data", data, "--name", "ddp",
         "--adapters-dir", tmp_path / "adapters", "--run-dir", tmp_path / "run", "--max-steps", "6",
         "--set", "lr=0.02", "--set", "logging_steps=1", "--set", "save_steps=6", "--set", "batch_size=4",
         "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained skill pack") == 1  # the main process reports, the other stays quiet
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["ddp"]  # no second or temporary folder
    pack = load_pack(tmp_path / "adapters" / "ddp")  # verifies the hashes the main process wrote
    assert pack.manifest.data.instances == len(PROMPTS)  # |D| is the whole file, not one process's shard
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 6 and losses[-1] < losses[0]
    # two processes of batch 4 make a global batch of 8: 6 steps see 48 rows, two epochs of 24
    assert state["epoch"] == 2.0
    base = AutoModelForCausalLM.from_pretrained(pre).eval()
    x = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        plain = base(x).logits
        adapted = PeftModel.from_pretrained(base, pack.path).eval()(x).logits
    assert (plain - adapted).abs().max() > 1e-4


ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_shipped_accelerate_configs_load_and_give_a_runnable_command():
    import shlex

    from accelerate.commands.config.config_args import load_config_from_file

    from lora_merge.train.training_recipe import load_training_recipe

    assert [p.name for p in ACCELERATE_CONFIGS] == ["fsdp-full.yaml"]
    for path in ACCELERATE_CONFIGS:
        cfg = load_config_from_file(str(path))  # accelerate's own parser, as `accelerate launch` reads it
        assert cfg.distributed_type == "FSDP"
        # the main process writes the pack from the gathered weights: a sharded state dict would not do
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        first = path.read_text().splitlines()[0]
        words = shlex.split(first.removeprefix("# "))
        assert words[:4] == ["accelerate", "launch", "--config_file", f"configs/accelerate/{path.name}"]
        assert words[4:6] == ["cli.py", "train"]
        recipe_path = ROOT / words[words.index("--config") + 1]
        sets = dict(w.split("=", 1) for w in words[words.index("--set") + 1:][:1])
        recipe = load_training_recipe(recipe_path, {"gradient_checkpointing": sets["gradient_checkpointing"] == "true"})
        # FSDP checkpoints activations itself; the trainer's own checkpointing on top would all-gather twice
        assert recipe.mode == "full" and not recipe.gradient_checkpointing
        assert cfg.fsdp_config["fsdp_activation_checkpointing"] is True
