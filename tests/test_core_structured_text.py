"""Users' YAML and JSON end in one clear error, never a traceback (issue 35, item 7); JSON rows end at "\\n" only.

A 5,000-digit number, 20,000 levels of nesting, non-UTF-8 bytes, alias bombs and the like, in every settings file
(merge and training recipes, study, map and miniature configs) and in `data validate`'s rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import MAX_DEPTH, InvalidJSON, check_structure, json_lines, json_value
from lora_merge.core.yaml_model import parse_yaml

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
# What each bad settings file holds (after `general: g` where a key is needed), and a word of the error.
BAD_SETTINGS = {
    "5,000-digit number": (b"seed: " + b"9" * 5000 + b"\n", "number too long"),
    "number past 2**63": (b"seed: " + str(2**70).encode() + b"\n", "seed: a whole number too large"),
    "20,000-deep list": (b"seed: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", "nested too deeply"),
    "20,000-deep mapping": (b"seed: " + b"{a: " * 20_000 + b"1" + b"}" * 20_000 + b"\n", "nested too deeply"),
    "100-deep list": (b"seed: " + b"[" * 100 + b"]" * 100 + b"\n", "nested too deeply"),
    "65-deep value": (b"seed: " + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"\n", f"nested deeper than {MAX_DEPTH}"),
    "non-UTF-8 bytes": (b"seed: \xff\xfe\x00\n", "not UTF-8"),
    "UTF-16 text": ("seed: 1\n".encode("utf-16"), "not UTF-8"),
    "alias bomb": (BOMB.encode(), "values (YAML aliases expanded)"),
    "a list that contains itself": (b"seed: &a [*a]\n", "contains itself"),
    "an impossible date": (b"seed: 2024-02-30\n", "not valid YAML"),
    "a python tag": (b"seed: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
}


@pytest.fixture(params=sorted(BAD_SETTINGS))
def bad_settings(request, tmp_path):
    text, needle = BAD_SETTINGS[request.param]
    path = tmp_path / "bad.yml"
    path.write_bytes(text)
    return path, needle


def test_every_settings_loader_refuses_it_with_one_clear_error(bad_settings):
    from lora_merge.fold.merge_recipe import load_merge_recipe
    from lora_merge.miniature.config import load_config
    from lora_merge.study.config import load_study_config
    from lora_merge.study.map_config import load_map_config
    from lora_merge.train.training_recipe import load_training_recipe

    path, needle = bad_settings
    for load in (load_merge_recipe, load_training_recipe, load_config, load_study_config, load_map_config):
        with pytest.raises(LoraMergeError, match="bad.yml") as info:
            load(path)
        assert needle in str(info.value), (load.__name__, str(info.value))
        assert len(str(info.value)) < 400, str(info.value)  # one line, not a parser's dump


@pytest.mark.parametrize("command", [["fold", "--config"], ["train", "--config"]])
def test_the_commands_say_so_in_one_line_exit_2(bad_settings, command):
    path, needle = bad_settings
    res = CliRunner().invoke(main, [*command, str(path)])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert isinstance(res.exception, SystemExit)


def test_train_set_values_are_read_the_same_way():
    for value, needle in (("9" * 5000, "number too long"), ("[" * 20_000, "nested too deeply"),
                          (str(2**64), "too large")):
        res = CliRunner().invoke(main, ["train", "--set", f"seed={value}"])
        assert res.exit_code == 2 and needle in res.output and "--set seed" in res.output, res.output


def test_settings_files_keep_what_they_need():
    assert parse_yaml("a: &x {b: [1, 2]}\nc: *x\nd: -9223372036854775807\n", "f") == {
        "a": {"b": [1, 2]}, "c": {"b": [1, 2]}, "d": -(2**63) + 1}
    check_structure(json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)), "f")  # deep enough for anyone


# --- JSON rows -------------------------------------------------------------------------------------------------

def test_json_values_fail_as_invalid_json_with_a_reason():
    for text, reason in (("[" * 20_000 + "]" * 20_000, "nested deeper"), ("9" * 5000, "number too long"),
                         ('{"a": ', "Expecting value"), ("[" * 100 + "]" * 100, "nested deeper")):
        with pytest.raises(InvalidJSON, match=reason):
            json_value(text)
    assert json_value("1" * 4000) == int("1" * 4000)  # a long number Python reads is left to the row's checks


def test_a_json_line_ends_at_a_newline_only():
    text = '{"a": "x\u2028y\u0085z\u2029"}\r\n\n  \n{"b": 1}'
    assert [(n, json.loads(line)) for n, line in json_lines(text)] == [
        (1, {"a": "x\u2028y\u0085z\u2029"}), (4, {"b": 1})]


ODD = "line\u2028separator, next\u0085line, paragraph\u2029end"  # valid raw inside a JSON string


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_and_training_rows_holding_line_separators_load(tmp_path):
    """Valid JSONL with U+2028 or U+0085 inside a string was refused as invalid (`splitlines()` cut the row)."""
    from lora_merge.evaluate.sets import load_eval_file
    from lora_merge.train.data import load_data

    ev = write_rows(tmp_path / "ev.jsonl", [{"prompt": ODD, "answer": ODD, "metric": "exact"}] * 2)
    rows = load_eval_file(ev).rows
    assert len(rows) == 2 and rows[0].prompt == ODD
    tr = write_rows(tmp_path / "tr.jsonl", [{"prompt": ODD, "completion": ODD}] * 3)
    assert len(load_data(tr).rows) == 3
    for path, kind in ((ev, "eval"), (tr, "train")):
        res = CliRunner().invoke(main, ["data", "validate", str(path)])
        assert res.exit_code == 0 and f"valid {kind} rows" in res.output, res.output


@pytest.mark.parametrize("line", [
    "[" * 20_000 + "]" * 20_000,
    '{"prompt": "a", "completion": "b", "n": ' + "9" * 5000 + "}",
    '{"prompt": "a", "metric": "exact", "answer": ' + "9" * 5000 + "}",
    '{"prompt": "a", "metric": "exact", "answer": "b", "x": ' + "[" * 500 + "]" * 500 + "}",
    '{"prompt": "a", "completion": "b", "x": ' + "{\"k\": " * 3000 + "1" + "}" * 3000 + "}",
], ids=["deep list", "huge int, training row", "huge int, eval row", "deep eval row", "deep mapping"])
def test_data_validate_refuses_deep_json_and_huge_numbers_in_one_line(tmp_path, line):
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n")
    res = CliRunner().invoke(main, ["data", "validate", str(path)])
    assert res.exit_code == 2 and "row 1" in res.output and "Traceback" not in res.output, res.output
    assert isinstance(res.exception, SystemExit)


def test_a_json_data_file_too(tmp_path):
    from lora_merge.train.data import load_data

    path = tmp_path / "rows.json"
    for text in ("[" * 20_000 + "]" * 20_000, "[" + "9" * 5000 + "]"):
        path.write_text(text)
        with pytest.raises(LoraMergeError, match="rows.json: not valid JSON"):
            load_data(path)
