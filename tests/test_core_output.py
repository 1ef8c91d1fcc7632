"""The output helper: inputs are never overwritten, only our own marked temporaries are cleaned."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.leftovers import MARKER, clean_leftovers, temp_path
from lora_merge.core.output import check_output, interrupt_on_signals, staged_output
from lora_merge.core.output_kinds import OutputKind
from lora_merge.pico import make_lora_pack, perturbed, pico_model, save_model

RESULT = OutputKind("result", ("r.txt",))  # what these tests write: a result --force may replace


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def models(tmp_path):
    """models/general and adapters/skill, the layout a user has."""
    pre = pico_model("llama")
    save_model(pre, tmp_path / "models" / "pre")
    save_model(perturbed(pre, seed=1), tmp_path / "models" / "general")
    make_lora_pack(pre, tmp_path / "models" / "pre", tmp_path / "adapters" / "skill", "skill", seed=2)
    return tmp_path


@pytest.mark.parametrize("out", ["models", "models/general", "models/general/inside", "adapters", "adapters/skill"])
def test_fold_refuses_an_output_that_overlaps_an_input_and_touches_nothing(models, out):
    before = snapshot(models)
    res = CliRunner().invoke(main, ["fold", "--general", str(models / "models" / "general"), "--adapters", "skill",
                                    "--adapters-dir", str(models / "adapters"), "--weights", "0.5",
                                    "--out", str(models / out), "--force"])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "input" in res.output and "Traceback" not in res.output
    assert snapshot(models) == before


def test_extract_refuses_writing_into_its_model(models):
    res = CliRunner().invoke(main, ["extract", "--model", str(models / "models" / "general"), "--base",
                                    str(models / "models" / "pre"), "--name", "x",
                                    "--out", str(models / "models"), "--force"])
    assert res.exit_code == 2 and "input" in res.output, res.output
    assert (models / "models" / "general" / "config.json").is_file()


def test_check_output_names_the_relation(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for out, word in ((tmp_path / "a", "is"), (tmp_path, "contains"), (tmp_path / "a" / "b" / "c", "lies inside")):
        with pytest.raises(LoraMergeError, match=f"{word} the input"):
            check_output(out, True, [tmp_path / "a"] if word != "lies inside" else [tmp_path / "a" / "b"])


def test_a_users_folder_that_looks_like_a_leftover_is_never_touched(tmp_path):
    """`.results.old-20240101` is the user's; neither a write nor cleanup moves or deletes it."""
    mine = tmp_path / ".results.old-20240101"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    also = tmp_path / ".results.tmp-1"
    also.mkdir()
    assert clean_leftovers(tmp_path) == []
    for force in (False, True):
        with staged_output(tmp_path / "results", force=force, kind=RESULT) as tmp:
            (tmp / "r.txt").write_text("done")
    assert (mine / "notes.txt").read_text() == "keep me" and also.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.old-20240101", ".results.tmp-1", "results"]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["r.txt"]  # no marker left in the result


def test_a_failed_write_leaves_nothing_and_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    with staged_output(out) as tmp:
        (tmp / "a").write_text("first")
        assert (tmp / MARKER).is_file() and tmp == temp_path(out)
    with pytest.raises(RuntimeError), staged_output(out, force=True, kind=OutputKind("test", ("a",))) as tmp:
        (tmp / "a").write_text("second")
        raise RuntimeError("boom")
    assert (out / "a").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sigterm_and_sighup_raise_keyboard_interrupt_while_staged():
    before = signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt), interrupt_on_signals():
            signal.raise_signal(sig)
    assert signal.getsignal(signal.SIGTERM) is before
