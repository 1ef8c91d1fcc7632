"""`data distill` on a pico θpre: the answers file it writes, and the check that refuses a θpre that changed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.skilldata import ordinary
from lora_merge.skilldata.shipped import shipped_path


@pytest.fixture(scope="module")
def pico_pre(tmp_path_factory):
    from lora_merge.study.quick import pico_base

    return pico_base(tmp_path_factory.mktemp("pico") / "pre", seed=0)


def test_distill_writes_every_prompt_as_kept_or_dropped_with_its_settings(pico_pre, tmp_path, monkeypatch):
    from lora_merge.skilldata import distill

    # A random pico model never ends a sentence: keep its non-empty replies whole, so the writer has rows to write
    monkeypatch.setattr(distill, "cut_answer", lambda reply, finished: reply.strip())
    monkeypatch.setattr(distill, "drop_reason", lambda prompt, answer, refusal: None if answer else "unfinished")
    out, shipped = tmp_path / "answers.json", shipped_path(ordinary.ANSWERS_FILE).read_bytes()
    res = CliRunner().invoke(main, ["--no-progress", "data", "distill", "--pre", str(pico_pre), "--out", str(out),
                                    "--batch-size", "64"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert shipped_path(ordinary.ANSWERS_FILE).read_bytes() == shipped  # --out: the shipped file untouched
    data = json.loads(out.read_text())
    ids = [p.id for p in ordinary.load_prompts()]
    assert data["answers"] and sorted([*data["answers"], *data["dropped"]]) == sorted(ids)  # each once
    assert sum(data["dropped_counts"].values()) == len(data["dropped"])
    s = data["settings"]
    assert s["kept"] == len(data["answers"]) and s["asked"] == len(ids) and s["system_prompt"] == "Answer briefly."
    assert s["mean_loglik"] < 0 and s["command"] == "python cli.py data distill" and s["model_sha256"]


def test_distill_writes_nothing_when_every_answer_is_dropped(pico_pre, tmp_path):
    out = tmp_path / "answers.json"
    res = CliRunner().invoke(main, ["--no-progress", "data", "distill", "--pre", str(pico_pre), "--out", str(out),
                                    "--batch-size", "64"])
    assert res.exit_code == 2 and "all dropped; nothing written" in res.output and not out.exists()


def test_check_refuses_a_theta_pre_that_no_longer_gives_the_shipped_answers(pico_pre):
    res = CliRunner().invoke(main, ["data", "distill", "--pre", str(pico_pre), "--check", "--batch-size", "64"])
    # the shipped answers are SmolLM2's: a pico model gives them a far lower likelihood
    assert res.exit_code == 2, res.output
    assert "θpre no longer gives these answers" in res.output and "python cli.py data distill" in res.output
    assert "Traceback" not in res.output
