"""Quiet by default, progress where it is long (issue 18 item 8): what the command line prints and what it does not.

Whole `cli.py` processes, so the global --quiet / --no-progress switches (read by the libraries at start-up)
are tested as a user meets them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_train import world  # noqa: F401 (a fixture: θpre with a character tokenizer and a skill file)

from lora_merge.core import console

ROOT = Path(__file__).resolve().parents[1]
BAR_MARKS = ("%|", "it/s]", "step/s", "tensor/s")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def has_bar(text: str) -> bool:
    return any(m in text for m in BAR_MARKS)


def test_no_empty_bars():
    assert console.bar([], desc="score", unit="batch").disable
    assert not console.bar([1], desc="score", unit="batch").disable
    assert console.bar([1], desc="score", unit="batch", progress=False).disable


def train_args(root: Path, pre: Path, data: Path, name: str) -> list[str]:
    return ["train", "--base", str(pre), "--data", str(data), "--name", name, "--adapters-dir", str(root / "ad"),
            "--run-dir", str(root / f"run-{name}"), "--max-steps", "2", "--batch-size", "8", "--rank", "2",
            "--set", "logging_steps=1"]


def test_train_shows_one_bar_and_keeps_trainer_logs_in_the_run_folder(world):  # noqa: F811
    root, pre, data = world
    r = cli(*train_args(root, pre, data, "loud"))
    assert r.returncode == 0, r.stderr
    assert "{'loss'" not in r.stdout + r.stderr and "'train_runtime'" not in r.stdout + r.stderr  # no raw dicts
    assert "train:" in r.stderr and "2/2" in r.stderr  # the bar, with the step count
    assert "bitsandbytes" not in r.stderr.lower() and "gemm_4bit" not in r.stderr  # lora run: no word from bitsandbytes
    assert "trained skill pack" in r.stdout
    logs = [json.loads(line) for line in (root / "run-loud" / "train_log.jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs if "loss" in log] == [1, 2]


def test_quiet_leaves_only_results(world):  # noqa: F811
    root, pre, data = world
    r = cli("--quiet", *train_args(root, pre, data, "quiet"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("trained skill pack")
    assert not has_bar(r.stderr) and "[transformers]" not in r.stderr, r.stderr


def test_no_progress_removes_every_bar_from_fold(pico_dirs, tmp_path):
    from lora_merge.pico import make_lora_pack

    pre, _gen, pre_dir, gen_dir = pico_dirs
    make_lora_pack(pre, pre_dir, tmp_path / "ad" / "skill", "skill")
    common = ["fold", "--general", str(gen_dir), "--adapters", "skill", "--adapters-dir", str(tmp_path / "ad"),
              "--weights", "0.5"]
    loud = cli(*common, "--out", str(tmp_path / "a"))
    assert loud.returncode == 0 and "fold:" in loud.stderr, loud.stderr
    plain = cli("--no-progress", *common, "--out", str(tmp_path / "b"))
    assert plain.returncode == 0 and not has_bar(plain.stderr) and "fold:" not in plain.stderr, plain.stderr
    assert plain.stdout.splitlines()[1:-1] == loud.stdout.splitlines()[1:-1]  # the same results (paths, times aside)
