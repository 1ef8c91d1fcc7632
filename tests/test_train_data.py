"""Training data: every accepted format normalises to prompt/completion; bad rows name file and row."""

from __future__ import annotations

import json

import pytest

from lora_merge.core.errors import LoraMergeError
from lora_merge.train.data import load_data, mix, replay_sample

TEXT = [{"prompt": "2+2=", "completion": "4", "id": 1}, {"prompt": "3+3=", "completion": "6", "id": 2}]
CHAT = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet", "csv"])
def test_text_rows_from_every_file_format(tmp_path, suffix):
    import pandas as pd

    path = tmp_path / f"d.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, TEXT)
    elif suffix == "json":
        path.write_text(json.dumps(TEXT))
    elif suffix == "parquet":
        pd.DataFrame(TEXT).to_parquet(path)
    else:
        pd.DataFrame(TEXT).to_csv(path, index=False)
    d = load_data(path)
    assert d.format == "text" and len(d) == 2
    assert d.rows == [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}]
    assert d.sha256 and d.path == str(path)


def test_chat_rows_train_the_last_assistant_turn():
    d = load_data(CHAT)
    assert d.format == "chat"
    assert d.rows[0]["completion"] == [{"role": "assistant", "content": "hello"}]
    assert [m["role"] for m in d.rows[0]["prompt"]] == ["system", "user"]


def test_conversational_prompt_completion_rows():
    d = load_data([{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}])
    assert d.format == "chat" and d.rows[0]["prompt"][0]["content"] == "q"


@pytest.mark.parametrize("row, what", [
    ({"prompt": "x"}, "neither 'messages' nor 'prompt' \\+ 'completion'"),
    ({"prompt": "x", "completion": ""}, "empty"),
    ({"prompt": "x", "completion": [{"role": "assistant", "content": "y"}]}, "both be strings"),
    ({"messages": [{"role": "user", "content": "x"}]}, "last message must be the assistant"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}, "role 'bot'"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}, "string 'role' and 'content'"),
    (["not", "an", "object"], "expected an object"),
])
def test_malformed_row_names_file_and_row(tmp_path, row, what):
    path = write_jsonl(tmp_path / "skill.jsonl", [TEXT[0], TEXT[1], row])
    with pytest.raises(LoraMergeError, match=f"skill.jsonl: row 3: .*{what}"):
        load_data(path)


def test_invalid_json_line_names_row_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(TEXT[0]) + "\n\n{oops\n")
    with pytest.raises(LoraMergeError, match=r"d.jsonl: row 2 \(line 3\) is not valid JSON"):
        load_data(path)


def test_mixed_formats_in_one_file_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [TEXT[0], CHAT[0]])
    with pytest.raises(LoraMergeError, match="row 2: is a chat row but row 1 is a text row"):
        load_data(path)


def test_missing_empty_and_unknown_files(tmp_path):
    with pytest.raises(LoraMergeError, match="does not exist"):
        load_data(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(LoraMergeError, match="holds no rows"):
        load_data(tmp_path / "e.jsonl")
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(LoraMergeError, match="unknown data format"):
        load_data(tmp_path / "d.txt")


def test_replay_sample_and_mix_counts():
    skill = load_data([{"prompt": f"s{i}", "completion": "x"} for i in range(10)])
    general = load_data([{"prompt": f"g{i}", "completion": "y"} for i in range(30)], "replay")
    picked = replay_sample(general, len(skill), 0.5, seed=3)
    assert len(picked) == 5 and all(r in general.rows for r in picked.rows)
    assert len({r["prompt"] for r in picked.rows}) == 5  # without replacement
    m = mix({"skill": skill}, {"replay": picked})
    assert m.counts == {"skill": 10, "replay": 5} and len(m.rows) == 15
    with pytest.raises(LoraMergeError, match="holds only 30"):
        replay_sample(general, len(skill), 4.0, seed=0)
    with pytest.raises(LoraMergeError, match="mix formats"):
        mix({"skill": skill, "general": load_data(CHAT)})
