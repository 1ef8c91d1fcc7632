"""`--force` replaces only what lora_merge wrote (issue 35): an earlier output of the same kind, or an empty folder.

Every writer is driven through the command line: a user's folder, the working directory and an output of another
kind are refused (exit 2, the folder unchanged, the message naming where --out came from and what the folder
holds); an empty folder and an earlier output of the writer's own kind are replaced.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.leftovers import PREFIX
from lora_merge.core.output import check_output, staged_output
from lora_merge.core.output_kinds import (
    EVAL_REPORT,
    KINDS,
    MERGED_MODEL,
    PACK,
    PREPARED,
    PRETRAINED,
    SKILL_DATA,
    SWEEP,
    TRAINED_MODEL,
    OutputKind,
    replace_refusal,
)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def fake_output(folder: Path, kind: OutputKind) -> Path:
    """A folder holding what an output of ``kind`` always holds (its marks)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in kind.marks:
        (folder / name).write_text("{}\n")
    return folder


# --- the rule ----------------------------------------------------------------------------------------------------

def test_the_marks_are_the_names_the_writers_write():
    from lora_merge.core.model_record import MODEL_RECORD
    from lora_merge.evaluate.report import TABLE_FILES
    from lora_merge.fold.resolved_recipe import RECIPE_NAME
    from lora_merge.miniature.pretrain import PRETRAIN_RECORD
    from lora_merge.pack.skillpack import MANIFEST_NAME
    from lora_merge.skilldata.write import REPORT
    from lora_merge.study.prepare import PREPARE_RECORD

    assert MERGED_MODEL.marks == (MODEL_RECORD, RECIPE_NAME)
    assert TRAINED_MODEL.marks[0] == MODEL_RECORD
    assert PACK.marks == (MANIFEST_NAME,)
    assert set(EVAL_REPORT.marks) <= set(TABLE_FILES)
    assert SKILL_DATA.marks[0] == REPORT
    assert PRETRAINED.marks[0] == PRETRAIN_RECORD and PREPARED.marks[0] == PREPARE_RECORD
    assert {MERGED_MODEL, TRAINED_MODEL, PACK, EVAL_REPORT, SWEEP, SKILL_DATA, PRETRAINED, PREPARED} == set(KINDS)


def test_what_force_may_replace(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert replace_refusal(empty, PACK) is None
    assert replace_refusal(fake_output(tmp_path / "pack", PACK), PACK) is None
    assert replace_refusal(fake_output(tmp_path / "pack", PACK), None) is None  # no kind named: any of ours
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert "notes.txt" in replace_refusal(mine, PACK, "--out") and "(from --out)" in replace_refusal(mine, PACK, "--out")
    assert "not an output lora_merge wrote" in replace_refusal(mine, None)
    assert "not a skill pack" in replace_refusal(fake_output(tmp_path / "scores", EVAL_REPORT), PACK)
    (tmp_path / "pack" / "projects").mkdir()  # a pack's marks, and a folder no pack holds
    assert "projects" in replace_refusal(tmp_path / "pack", PACK)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert replace_refusal(tmp_path / "dangling", PACK) is None  # replacing a dangling link deletes nothing
    monkeypatch.chdir(empty)
    assert "is the working directory" in replace_refusal(empty, PACK)
    assert "holds the working directory" in replace_refusal(tmp_path, None)


def test_a_folder_that_changed_while_the_result_was_written_is_not_replaced(tmp_path):
    out = fake_output(tmp_path / "out", PACK)
    with pytest.raises(LoraMergeError, match="refusing to replace"):
        with staged_output(out, force=True, kind=PACK) as tmp:
            (tmp / "skill.json").write_text("new")
            (out / "work").mkdir()  # the user put a folder of their own there meanwhile
    assert (out / "work").is_dir() and (out / "skill.json").read_text() == "{}\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(PREFIX)]


def test_a_rename_the_system_refuses_is_one_clear_error(tmp_path, monkeypatch):
    """`data write --out . --force` once ended in an EBUSY traceback; a refused rename now says where."""
    real = os.replace

    def busy(src, dst):
        if Path(dst) == tmp_path / "out":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(LoraMergeError, match="cannot put the output in place"):
        with staged_output(tmp_path / "out", kind=PACK) as tmp:
            (tmp / "skill.json").write_text("{}")
    assert not (tmp_path / "out").exists()


def test_check_output_refuses_the_working_directory_even_without_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(LoraMergeError, match="working directory"):
            check_output(out, False, kind=SKILL_DATA)


# --- every writer, through the command line ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """θpre and θG with a tokenizer, two packs in adapters/, a PEFT adapter folder, training rows and an eval set."""
    from lora_merge.pico import make_lora_pack, perturbed, pico_char_tokenizer, pico_model, save_model

    root = tmp_path_factory.mktemp("kinds")
    pre = pico_model("llama", hidden=32)
    pre_dir = save_model(pre, root / "pre")
    gen_dir = save_model(perturbed(pre, seed=1), root / "general")
    for d in (pre_dir, gen_dir):
        pico_char_tokenizer(d)
    reg = root / "adapters"
    make_lora_pack(pre, pre_dir, reg / "skill", "skill", seed=2, instances=100)
    make_lora_pack(pre, pre_dir, reg / "skill2", "skill2", seed=3, instances=100)
    adapter = root / "adapter"  # a PEFT adapter trained elsewhere: the pack's files without its manifest
    adapter.mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(reg / "skill" / f, adapter / f)
    data = root / "skill.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"add {i}: ", "completion": f"{i + 1}!"}) + "\n" for i in range(8)))
    evals = root / "evals.jsonl"
    evals.write_text(json.dumps({"prompt": "add 1: ", "answer": "2", "metric": "contains"}) + "\n")
    return SimpleNamespace(root=root, pre=pre_dir, gen=gen_dir, reg=reg, adapter=adapter, data=data, evals=evals)


def recipe(w, out: str) -> str:
    path = w.root / f"merge-{abs(hash(out))}.yml"
    path.write_text(f"general: {w.gen}\nadapters_dir: {w.reg}\nadapters: [{{pack: skill, weight: 0.5}}]\n"
                    f"out: {json.dumps(out)}\n")
    return str(path)


# writer → (its command with --out OUT --force, the kind it writes, where its refusal says --out came from)
WRITERS = {
    "fold": (lambda w, out: ["fold", "--general", str(w.gen), "--adapters", "skill", "--adapters-dir", str(w.reg),
                             "--weights", "0.5", "--out", out, "--force"], MERGED_MODEL, "--out"),
    "fold recipe": (lambda w, out: ["fold", "--config", recipe(w, out), "--force"], MERGED_MODEL,
                    "`out:` in the merge recipe"),
    "data write": (lambda w, out: ["data", "write", "coding", "--n-train", "6", "--n-eval", "3", "--out", out,
                                   "--force"], SKILL_DATA, "--out"),
    "extract": (lambda w, out: ["extract", "--model", str(w.gen), "--base", str(w.pre), "--name", "x", "--out", out,
                                "--force"], PACK, None),
    "pack create": (lambda w, out: ["pack", "create", str(w.adapter), "--name", "c", "--instances", "10",
                                    "--base", str(w.pre), "--out", out, "--force"], PACK, None),
    "pack merge": (lambda w, out: ["pack", "merge", "--adapters", "skill,skill2", "--adapters-dir", str(w.reg),
                                   "--base", str(w.pre), "--out", out, "--force"], PACK, "--out"),
    "eval": (lambda w, out: ["eval", "--model", str(w.gen), "--evals", f"g={w.evals}", "--max-new-tokens", "2",
                             "--out", out, "--force"], EVAL_REPORT, "--out"),
    "sweep": (lambda w, out: ["sweep", "--general", str(w.gen), "--adapters", "skill", "--adapters-dir", str(w.reg),
                              "--evals", f"general={w.evals}", "--evals", f"skill={w.evals}", "--omegas", "0.5",
                              "--max-new-tokens", "2", "--out", out, "--force"], SWEEP, "--out"),
    "train": (lambda w, out: ["train", "--base", str(w.pre), "--data", str(w.data), "--name", "t", "--out", out,
                              "--run-dir", str(w.root / "run"), "--max-steps", "1", "--batch-size", "4", "--rank", "2",
                              "--no-progress", "--force"], PACK, "--out"),
}
RUN = ["fold", "fold recipe", "data write", "extract", "pack create", "pack merge", "eval", "train"]  # sweep: slow


def invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def refused(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, (SystemExit, type(None)))
    for needle in needles:
        assert needle in res.output, (needle, res.output)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_users_folder_is_refused_and_left_as_it_was(world, tmp_path, writer):
    """`fold --out ~/projects --force` (issue 35): a folder of someone else's files is never replaced."""
    args, kind, origin = WRITERS[writer]
    out = tmp_path / "projects"
    (out / "src").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    res = invoke(args(world, str(out)))
    refused(res, "refusing to replace", "notes.txt", "src/", f"not {kind.describe()}",
            *([f"(from {origin}"] if origin else []))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_an_output_of_another_kind_is_refused(world, tmp_path, writer):
    args, kind, _origin = WRITERS[writer]
    other = next(k for k in KINDS if not set(k.marks) <= set(kind.marks) and not set(kind.marks) <= set(k.marks))
    out = fake_output(tmp_path / "other", other)
    before = snapshot(tmp_path)
    refused(invoke(args(world, str(out))), "refusing to replace", other.marks[0])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_the_working_directory_is_refused(world, tmp_path, monkeypatch, writer):
    args, _kind, _origin = WRITERS[writer]
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    before = snapshot(tmp_path)
    for out in (".", ".."):
        refused(invoke(args(world, out)), "the working directory")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("writer", RUN)
def test_an_empty_folder_and_an_earlier_output_of_the_same_kind_are_replaced(world, tmp_path, writer):
    args, kind, _origin = WRITERS[writer]
    out = tmp_path / "out"
    out.mkdir()
    if writer in ("eval", "train"):  # one run each: an earlier output of the kind (its records) is replaced
        fake_output(out, kind)
        (out / "stale.txt").write_text("from the earlier run")
    res = invoke(args(world, str(out)))
    assert res.exit_code == 0, res.output
    assert all((out / m).is_file() for m in kind.marks) and not (out / "stale.txt").exists()
    if writer not in ("eval", "train"):
        (out / kind.marks[0]).write_text((out / kind.marks[0]).read_text() + " ")  # touched: replaced again?
        res = invoke(args(world, str(out)))
        assert res.exit_code == 0, res.output
        assert not (out / kind.marks[0]).read_text().endswith(" ")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(PREFIX)]


def test_train_starting_over_removes_only_the_earlier_checkpoints(tmp_path):
    """`--force` with checkpoints in --run-dir once removed the whole folder (`--run-dir .` took the user's files)."""
    from lora_merge.train.run import clear_run_dir

    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (tmp_path / "train_log.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoint-notes").mkdir()
    clear_run_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-notes", "notes.txt"]
