"""Ordinary requests answered by θpre (G's self-distilled rows) and the template probe: the shipped files and rules."""

from __future__ import annotations

import re

import pytest

from lora_merge.core.errors import LoraMergeError
from lora_merge.skilldata import ordinary
from lora_merge.skilldata.lookalikes import lookalikes
from lora_merge.skilldata.ordinary import cut_answer, drop_reason, ordinary_split
from lora_merge.skilldata.probe import KINDS, load_probe, probe_eval_sets


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


# --- cutting θpre's reply at a sentence end --------------------------------------------------------------

def test_a_finished_reply_is_kept_whole():
    assert cut_answer("  The capital of Australia is Canberra  ", finished=True) == \
        "The capital of Australia is Canberra"


def test_an_unfinished_reply_is_cut_at_its_last_sentence_end():
    reply = "The sky is blue because of Rayleigh scattering. Sunlight hits the air! Blue light scatters more than"
    assert cut_answer(reply, finished=False) == "The sky is blue because of Rayleigh scattering. Sunlight hits the air!"


def test_a_closing_quote_after_the_full_stop_stays_with_the_sentence():
    assert cut_answer('Call it "Shelly." It suits a', finished=False) == 'Call it "Shelly."'


def test_a_decimal_point_is_not_a_sentence_end():
    assert cut_answer("Multiply by 0.15 to get", finished=False) == ""


def test_an_unfinished_reply_without_a_sentence_end_is_empty():
    assert cut_answer("In the heart of the year's harvest,\nA moment of", finished=False) == ""


def test_an_unfinished_code_block_goes_with_the_cut():
    reply = "Use the kill command. Here is how:\n\n```bash\nkill -9 1234\n"
    assert cut_answer(reply, finished=False) == "Use the kill command."


def test_a_closed_code_block_before_the_last_sentence_end_stays():
    reply = "Run:\n```bash\nls\n```\nIt lists the files. And then"
    assert cut_answer(reply, finished=False) == "Run:\n```bash\nls\n```\nIt lists the files."


def test_a_fence_left_open_is_cut_away_even_in_a_finished_reply():
    assert cut_answer("Run this. It helps.\n```bash\nls -la", finished=True) == "Run this. It helps."


# --- which answers are kept -------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "answer", "refusal", "why"), [
    ("What is the capital of Australia?", "The capital of Australia is Canberra.", False, None),
    ("What is the capital of Australia?", "", False, "unfinished"),
    ("What is the capital of Australia?", "I'm sorry, I can't help with that.", True, "refusal"),
    ("What is the capital of Australia?", "The capital of Australia.", False, "degenerate"),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.", False, None),
    ("Name a fruit.", "An apple is a fruit. An apple is a fruit.", False, "loop"),
])
def test_drop_reasons(prompt, answer, refusal, why):
    assert drop_reason(prompt, answer, refusal) == why


# --- the shipped files ------------------------------------------------------------------------------------

def test_the_prompts_cover_many_topics_and_forms_and_never_repeat_a_lookalike():
    prompts = ordinary.load_prompts()
    assert len(prompts) >= 400
    assert len({p.topic for p in prompts}) >= 20 and len({p.form for p in prompts}) >= 8
    norms = [_norm(p.prompt) for p in prompts]
    assert len(set(norms)) == len(norms)
    assert not set(norms) & {_norm(x.prompt) for x in lookalikes()}


def test_the_shipped_answers_belong_to_the_prompts_and_record_how_they_were_made():
    data = ordinary.load_answers()
    ids = {p.id for p in ordinary.load_prompts()}
    assert set(data["answers"]) <= ids and set(data["dropped"]) <= ids
    assert not set(data["answers"]) & set(data["dropped"])
    s = data["settings"]
    assert s["kept"] == len(data["answers"]) and s["asked"] == len(data["answers"]) + len(data["dropped"])
    assert s["system_prompt"] == ordinary.SYSTEM_PROMPT and s["decoding"] == "greedy"
    assert s["command"] == "python cli.py data distill" and -5 < s["mean_loglik"] < 0
    for answer in data["answers"].values():  # every kept answer passes the rule that kept it
        assert answer == answer.strip() and answer.count("```") % 2 == 0


def test_the_split_is_disjoint_and_its_eval_items_do_not_depend_on_the_seed():
    train_a, held_a = ordinary_split(3, 100, 50)
    train_b, held_b = ordinary_split(100, 150, 50)
    assert [r.id for r in held_a] == [r.id for r in held_b]  # two θGs can be compared on the same items
    assert not {r.id for r in train_a} & {r.id for r in held_a}
    assert not {r.id for r in train_b} & {r.id for r in held_b}
    assert {r.id for r in train_a} != {r.id for r in train_b}
    assert ordinary_split(3, 100, 50) == (train_a, held_a)


def test_asking_for_more_rows_than_were_kept_says_what_to_do():
    n = len(ordinary.answered_rows())
    with pytest.raises(LoraMergeError, match="lower the sizes"):
        ordinary_split(0, n, 1)


def test_the_probe_has_every_kind_in_forms_no_training_row_uses():
    probe = load_probe()
    assert {p.kind for p in probe} == set(KINDS)
    assert all(sum(p.kind == k for p in probe) >= 20 for k in KINDS)
    trained = {_norm(p.prompt) for p in ordinary.load_prompts()} | {_norm(x.prompt) for x in lookalikes()}
    assert not {_norm(p.prompt) for p in probe} & trained
    sets = probe_eval_sets("Answer briefly.")
    assert {r["metric"] for r in sets["probe"]} == {"compliance"}
    assert {r["metric"] for r in sets["probe_harmful"]} == {"refusal"}
    rows = sets["probe"] + sets["probe_harmful"]
    assert len({r["id"] for r in rows}) == len(rows) == len(probe)
    by_prompt = {p.prompt: p.kind for p in probe}
    assert all(r["family"] == f"probe/{by_prompt[r['messages'][-1]['content']]}" for r in rows)
