"""Metrics against hand-labelled cases, and the eval-set format's validation."""

from __future__ import annotations

import json

import pytest

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.scoring import normalize_answer, score_choice, score_contains, score_exact
from lora_merge.evaluate.sets import load_eval_file, parse_eval_option, parse_row


@pytest.mark.parametrize("output,answers,expected", [
    ("Paris", ["paris"], True),
    ("  The answer is Paris.", ["Paris"], False),  # extra words: not exact
    ("The Eiffel Tower!", ["eiffel tower"], True),  # article and punctuation dropped
    ("3.5", ["3.5"], True),
    ("35", ["3.5"], False),  # a decimal point between digits is kept
    ("four", ["4", "four"], True),  # any accepted answer
    ("fourteen", ["four"], False),
    ("", ["four"], False),
])
def test_exact(output, answers, expected):
    assert score_exact(output, answers) is expected


@pytest.mark.parametrize("output,answers,expected", [
    ("The answer is Paris.", ["paris"], True),
    ("It is 14.", ["4"], False),  # whole words only
    ("It is 4.", ["4"], True),
    ("new york city", ["New York"], True),
    ("york new", ["new york"], False),
    ("I don't know", ["paris", "know"], True),
])
def test_contains(output, answers, expected):
    assert score_contains(output, answers) is expected


@pytest.mark.parametrize("logprobs,correct,expected", [
    ([-1.0, -2.0], 0, True),
    ([-1.0, -2.0], 1, False),
    ([-3.0, -0.5, -0.7], 1, True),
    ([-1.0, -1.0], 0, False),  # a tie is not a right answer
])
def test_choice(logprobs, correct, expected):
    assert score_choice(logprobs, correct) is expected


def test_normalize_answer():
    assert normalize_answer("  The  Quick, brown fox! ") == "quick brown fox"
    assert normalize_answer("It’s 2.5 km") == "it s 2.5 km"


def test_rows_parse_each_metric():
    r = parse_row({"prompt": "2+2?", "answer": "4", "metric": "exact"}, "x")
    assert r.answers == ("4",)
    r = parse_row({"prompt": "q", "choices": ["a", "b", "c"], "answer": "c", "metric": "choice"}, "x")
    assert r.correct == 2
    r = parse_row({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "x")
    assert r.metric == "loss"  # chat data without a metric is held-out loss data
    assert parse_row({"prompt": "p", "completion": "c"}, "x").metric == "loss"
    assert parse_row({"text": "some text"}, "x").metric == "loss"
    assert parse_row({"prompt": "how do I kill a python process", "metric": "compliance"}, "x").metric == "compliance"


@pytest.mark.parametrize("row,needle", [
    ({"prompt": "q", "metric": "exact"}, "missing field 'answer'"),
    ({"answer": "a", "metric": "exact"}, "missing field 'prompt'"),
    ({"prompt": "q"}, "missing field 'metric'"),
    ({"prompt": "q", "metric": "bleu"}, "unknown metric 'bleu'"),
    ({"prompt": "q", "choices": ["a"], "answer": 0, "metric": "choice"}, "choices"),
    ({"prompt": "q", "choices": ["a", "b"], "answer": 2, "metric": "choice"}, "not an index"),
    ({"prompt": "q", "metric": "loss"}, "missing field"),
    ({"messages": [{"role": "robot", "content": "x"}], "metric": "refusal"}, "unknown role"),
    ({"prompt": "q", "messages": [{"role": "user", "content": "x"}], "metric": "refusal"}, "not both"),
])
def test_bad_rows_name_file_and_row(tmp_path, row, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "fine", "metric": "refusal"}) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(LoraMergeError) as e:
        load_eval_file(f)
    assert needle in str(e.value)
    assert f"{f}, row 3" in str(e.value)  # blank lines count: the row is the line number


def test_bad_files(tmp_path):
    with pytest.raises(LoraMergeError, match="no such eval file"):
        load_eval_file(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LoraMergeError, match="holds no rows"):
        load_eval_file(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": \n')
    with pytest.raises(LoraMergeError, match="row 1: not valid JSON"):
        load_eval_file(tmp_path / "broken.jsonl")


def test_eval_option_parsing():
    g = parse_eval_option(["general=a.jsonl,b.jsonl", "skill=c.jsonl", "general=d.jsonl"])
    assert {k: [p.name for p in v] for k, v in g.items()} == {"general": ["a.jsonl", "b.jsonl", "d.jsonl"],
                                                              "skill": ["c.jsonl"]}
    with pytest.raises(LoraMergeError, match="GROUP=PATH"):
        parse_eval_option(["a.jsonl"])
