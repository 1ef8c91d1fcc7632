"""`cli.py demo --quick`: the real-model demo's pipeline on a pico Llama (the SmolLM2 wheel is not needed).

Checks what the demo promises a user: summary.json's schema, every output under --out (nothing in the repository's
adapters/ or anywhere else), the same seed giving the same packs and scores, and next commands that run as printed.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.stages import StagePlan, clock
from lora_merge.demo.run import clear_outputs
from lora_merge.demo.summary import ROW_KEYS
from lora_merge.demo.verdict import judge
from lora_merge.evaluate.intervals import paired_proportion_interval
from lora_merge.study.config import TransferRule, load_study_config

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "demo-smollm2.yaml"


def _demo(workdir: Path, out: str, *extra: str, quiet: bool = False):
    """Run the quick demo with ``workdir`` as the current folder (relative --out, like `make demo`)."""
    import os

    here, env = os.getcwd(), dict(os.environ)
    os.chdir(workdir)
    try:
        res = CliRunner().invoke(main, [*(["--quiet"] if quiet else []), "demo", "--quick", "--config", str(CONFIG), "--out", out, "--threads", "1",
                                        "--no-progress", *extra])
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(env)  # --quiet sets the libraries' switches for the whole process
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same quick demo twice (same seed) from an empty working folder, and what the repository held before."""
    work = tmp_path_factory.mktemp("demo-work")
    adapters_before = sorted(p.name for p in (REPO / "adapters").iterdir())
    first = _demo(work, "runs/demo")
    second = _demo(work, "runs/again", quiet=True)
    return work, first, second, adapters_before


def test_summary_json_schema(two_runs):
    work, output, _, _ = two_runs
    summary = json.loads((work / "runs/demo/summary.json").read_text())
    assert set(summary) == {"seed", "rule", "skills", "rows", "theta_G_check", "probe"}
    assert summary["rule"] == load_study_config(CONFIG).rule.model_dump()  # the config's rule, with the result
    rows = summary["rows"]
    assert {r["skill"] for r in rows} == {"science", "safety"}
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert row["method"] in ("theta_G", "PTM", "CFT")
        for key in ("general", "skill_score"):
            assert isinstance(row[key], float) and 0.0 <= row[key] <= 100.0
        assert isinstance(row["skill_heldout"], float) and 0.0 <= row["skill_heldout"] <= 100.0  # every skill has one
        for key in ("lookalike", "lookalike_unseen"):
            assert (row[key] is not None) == (row["skill"] == "safety")
        assert (row["omega"] is None) == (row["method"] != "PTM")
        assert (row["ci"] is None) == (row["method"] == "theta_G")
        if row["ci"]:
            want = {"general", "skill", "skill_heldout"} | ({"lookalike", "lookalike_unseen"} if row["skill"] == "safety"
                                                            else set())
            assert set(row["ci"]) - {"chat", "chat_answered"} == want  # chat's where the config scores it
            assert all(set(e) == {"delta", "low", "high", "n"} for e in row["ci"].values())
            assert all(e["low"] <= e["delta"] <= e["high"] for k, e in row["ci"].items() if k != "chat")
    for skill in ("science", "safety"):
        methods = [r["method"] for r in rows if r["skill"] == skill]
        assert methods == ["theta_G", "PTM", "CFT"]
        omegas = [r["omega"] for r in rows if r["skill"] == skill and r["method"] == "PTM"]
        assert omegas == [8 / 32]  # |D|/|G| of the quick sizes: the rule's endpoint, the config's grid is empty
        verdict = summary["skills"][skill]
        assert verdict["omega"] == 8 / 32 and isinstance(verdict["transferred"], bool)
        assert verdict["transferred"] == all(c["holds"] for c in verdict["checks"])
        ptm = next(r for r in rows if r["skill"] == skill and r["method"] == "PTM")
        chat = summary["rule"]["chat_margin"] is not None and "chat" in ptm["ci"]
        assert len(verdict["checks"]) == (3 if skill == "safety" else 2) + chat

    assert (work / "runs/demo/summary.md").read_text().startswith("# make demo")
    for skill in ("science", "safety"):
        assert (work / f"runs/demo/tradeoff_{skill}.png").read_bytes()[:4] == b"\x89PNG"
    assert "science:" in output and "safety:" in output and "CFT" in output
    assert "The rule" in output and "under the rule" in output  # the closing screen states the rule


def test_the_intervals_are_newcombes_on_the_stored_item_outcomes(two_runs):
    work = two_runs[0]
    scores = json.loads((work / "runs/demo/results/scores.json").read_text())
    rows = json.loads((work / "runs/demo/summary.json").read_text())["rows"]
    ptm = next(r for r in rows if r["skill"] == "science" and r["method"] == "PTM")
    label = next(k for k, e in scores.items() if e["meta"].get("kind") == "ptm" and e["meta"]["skill"] == "science")
    for endpoint, set_name in (("general", "general"), ("skill", "science"), ("skill_heldout", "science_heldout")):
        base, cand = scores["θG"]["sets"][set_name], scores[label]["sets"][set_name]
        assert base["ids"] == cand["ids"] and len(set(base["ids"])) == len(base["ids"])  # the same items, each once
        assert 100 * sum(cand["outcomes"]) / len(cand["outcomes"]) == pytest.approx(cand["score"])
        iv = paired_proportion_interval([bool(x) for x in base["outcomes"]], [bool(x) for x in cand["outcomes"]])
        assert ptm["ci"][endpoint] == {"delta": round(iv.delta, 1), "low": round(iv.low, 1), "high": round(iv.high, 1),
                                       "n": iv.n}


def test_quiet_drops_the_stage_lines_and_keeps_the_summary(two_runs):
    _, first, quiet, _ = two_runs
    assert "[1/" in first and "elapsed" in first
    assert "[1/" not in quiet and "elapsed" not in quiet and "θG: " not in quiet.split("| skill |")[0]
    assert "| skill |" in quiet and "next: fold" in quiet  # the summary table and the next commands are results


def test_outputs_only_under_out(two_runs):
    work, _, _, adapters_before = two_runs
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["again", "demo"]
    out = work / "runs/demo"
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["general", "safety", "science"]
    assert (out / "general" / "config.json").is_file()
    assert sorted(p.name for p in (REPO / "adapters").iterdir()) == adapters_before


def test_same_seed_same_packs_and_scores(two_runs):
    work = two_runs[0]
    a, b = work / "runs/demo", work / "runs/again"
    assert json.loads((a / "summary.json").read_text()) == json.loads((b / "summary.json").read_text())
    for pack in ("general", "science", "safety"):
        files = json.loads((a / "adapters" / pack / "skill.json").read_text())["files"]
        again = json.loads((b / "adapters" / pack / "skill.json").read_text())["files"]
        # the weights are the same bytes; adapter_config.json (hashed too) names each run's own base folder
        assert files["adapter_model.safetensors"] == again["adapter_model.safetensors"]


def test_every_stage_shows_an_eta_and_the_last_lines_are_runnable_commands(two_runs, tmp_path):
    work, output, _, _ = two_runs
    stages = [line for line in output.splitlines() if line.startswith("[") and " left" in line]
    assert len(stages) == 10 and stages[0].startswith("[1/10]") and stages[-1].startswith("[10/10]")
    commands = [line.strip() for line in output.splitlines()[-3:]]
    assert [c.split()[2] for c in commands] == ["fold", "sweep", "eval"]
    for cmd in commands:
        args = shlex.split(cmd)
        assert args[:2] == [".venv/bin/python", "cli.py"]
        for i, a in enumerate(args):  # every input path exists (outputs follow --out)
            if args[i - 1] in ("--general", "--adapters-dir"):
                assert (work / a).exists(), a
        import os

        here = os.getcwd()
        os.chdir(work)
        try:
            res = CliRunner().invoke(main, args[2:])
        finally:
            os.chdir(here)
        assert res.exit_code == 0, cmd + "\n" + res.output + repr(res.exception)


def test_a_new_run_clears_what_the_last_one_wrote_but_keeps_the_cached_base_and_general_model(tmp_path):
    out = tmp_path / "demo"
    for folder in ("pre", "adapters/science", "adapters/general", "general", "results", "stamps"):
        (out / folder).mkdir(parents=True)
    for f in ("pre/config.json", "adapters/science/skill.json", "adapters/general/skill.json", "general/config.json",
              "stamps/general.json", "stamps/science.json", "summary.json", "tradeoff_science.png", "notes.txt"):
        (out / f).write_text("x")
    clear_outputs(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "adapters", "adapters/general", "adapters/general/skill.json", "general", "general/config.json",
        "notes.txt", "pre", "pre/config.json", "stamps", "stamps/general.json"]


def test_a_folded_model_is_refolded_only_when_its_pack_is_newer_than_the_fold(tmp_path):
    import os

    from lora_merge.study.driver import needs_refold

    pack, folded = tmp_path / "pack", tmp_path / "folded"
    pack.mkdir(), folded.mkdir()
    assert needs_refold(folded, pack)  # nothing folded yet
    for f, when in ((folded / "config.json", 100), (pack / "skill.json", 200), (folded / "lora_merge.json", 300)):
        f.write_text("{}")
        os.utime(f, (when, when))
    assert not needs_refold(folded, pack)  # config.json keeps the base's old mtime: the fold's record decides
    os.utime(pack / "skill.json", (400, 400))
    assert needs_refold(folded, pack)


def test_a_rerun_reuses_the_general_model_and_scores_the_same(two_runs):
    """θG is kept between runs of the same inputs (its stamp); skills, sweeps and scores are made again."""
    work, first, _, _ = two_runs
    rows = (work / "runs/demo/summary.json").read_text()
    pack = work / "runs/demo/adapters/science/skill.json"
    made = pack.stat().st_mtime_ns
    output = _demo(work, "runs/demo")
    assert "reused from the last run" in output and "reusing" in output
    assert "θG: scores reused from the last run" in output  # same θG, eval files and settings: its scores too
    assert pack.stat().st_mtime_ns != made  # the skill pack was trained again
    assert (work / "runs/demo/summary.json").read_text() == rows
    cache = work / "runs/demo/stamps/general-scores.json"
    record = json.loads(cache.read_text())
    cache.write_text(json.dumps({**record, "key": "an eval file changed"}))
    output = _demo(work, "runs/demo")
    assert "θG: scores reused" not in output  # anything they depend on changed: θG is scored again
    assert json.loads(cache.read_text())["key"] == record["key"]
    assert (work / "runs/demo/summary.json").read_text() == rows


def test_general_only_stops_after_the_general_model_and_exits_1_when_its_check_fails(tmp_path):
    args = ["demo", "--quick", "--config", str(CONFIG), "--out", str(tmp_path / "g"), "--threads", "1",
            "--no-progress", "--general-only"]
    res = CliRunner().invoke(main, args)
    assert "θG against θpre before anything is folded" in res.output and "| θG |" in res.output
    assert res.exit_code == (1 if "The check FAILS" in res.output else 0), res.output + repr(res.exception)
    assert (tmp_path / "g" / "general" / "config.json").is_file()
    assert not (tmp_path / "g" / "adapters" / "science").exists()  # no skill trained, nothing folded
    assert not (tmp_path / "g" / "summary.json").exists()
    for bad in (["--seeds", "2"], ["--world", "miniature"]):
        res = CliRunner().invoke(main, ["demo", "--general-only", *bad])
        assert res.exit_code == 2 and "--general-only is for one run" in res.output


def test_miniature_only_flags_are_refused():
    res = CliRunner().invoke(main, ["demo", "--adapters-dir", "adapters"])
    assert res.exit_code == 2 and "--world miniature" in res.output


def test_missing_model_wheel_says_how_to_install_it():
    from lora_merge.study.prepare import find_gguf

    with pytest.raises(LoraMergeError, match="make demo"):
        find_gguf("lora_merge_no_such_model_wheel")


def test_demo_data_eval_sets_are_disjoint_from_training(tmp_path):
    from lora_merge.demo.data import demo_data
    from lora_merge.skilldata import overlap
    from lora_merge.study.config import StudyConfig

    cfg = StudyConfig(out=tmp_path, sizes={"general": 24, "skills": {"science": 9, "safety": 9}, "eval_general": 5,
                                           "eval_skill": 5, "eval_unsafe": 5})
    data = demo_data(tmp_path, cfg)
    def read(path):
        return [json.loads(x) for x in path.read_text().splitlines()]

    train = {k: read(p) for k, p in data.files.train.items()}
    evals = {k: read(p) for k, p in data.files.evals.items()}
    assert data.files.counts["safety"] == 9 and sum(r["id"].startswith("lookalike/") for r in train["safety"]) == 3
    for skill, sets in data.skills.items():
        for name in (sets.in_form, sets.held_out, sets.lookalike):
            if name:
                assert evals[name] and not overlap(train[skill], evals[name]), name
    assert not overlap(train["general"], evals["general"])


def test_demo_data_with_ordinary_requests_mixes_them_into_G_and_holds_the_chat_sets_out(tmp_path):
    from lora_merge.demo.data import demo_data
    from lora_merge.skilldata import overlap
    from lora_merge.skilldata.ordinary import ordinary_split
    from lora_merge.study.config import StudyConfig

    sizes = {"general": 24, "general_ordinary": 10, "skills": {"science": 9}, "eval_general": 5, "eval_skill": 5,
             "eval_chat": 7}
    data = demo_data(tmp_path, StudyConfig(out=tmp_path, seed=5, sizes=sizes, probe=True))
    rows = [json.loads(x) for x in data.files.train["general"].read_text().splitlines()]
    train, held = ordinary_split(5, 10, 7)
    assert data.files.counts["general"] == len(rows) == 24  # |G| keeps its size: 14 toy rows + 10 ordinary ones
    answers = [r["completion"][-1]["content"] for r in rows]
    assert sorted(a for a in answers if a in {t.answer for t in train}) == sorted(t.answer for t in train)
    chat = [json.loads(x) for x in data.files.evals["chat"].read_text().splitlines()]
    assert [c["messages"][-1]["content"] for c in chat] == [h.answer for h in held]  # θpre's answers, scored as loss
    assert all(c["metric"] == "loss" for c in chat)
    answered = [json.loads(x) for x in data.files.evals["chat_answered"].read_text().splitlines()]
    assert [a["messages"][-1]["content"] for a in answered] == [h.prompt for h in held]
    assert all(a["metric"] == "compliance" and "answer" not in a for a in answered)
    assert not overlap(rows, answered)
    assert data.files.general_sets == ["general", "chat", "chat_answered", "probe", "probe_harmful"]
    assert data.files.group("chat") == "chat" and data.files.group("probe") == "probe"


def test_stage_plan_eta_follows_the_pace():
    lines: list[str] = []
    t = [0.0]
    plan = StagePlan([("a", 10.0), ("b", 30.0)], lines.append, now=lambda: t[0])
    with plan.stage("a"):
        t[0] = 20.0  # twice as slow as planned
    with plan.stage("b"):
        pass
    assert lines[0].endswith("about 0:40 left")  # the plan as written
    assert lines[1].endswith("about 1:00 left")  # 30 planned seconds at half speed
    assert clock(3725) == "1:02:05" and clock(59.6) == "1:00"


def test_stage_plan_eta_ignores_stages_a_resumed_run_reused():
    lines: list[str] = []
    t = [0.0]
    plan = StagePlan([("a", 100.0), ("b", 30.0), ("c", 30.0)], lines.append, now=lambda: t[0])
    with plan.stage("a"):
        t[0] = 1.0  # reused: 1 s of a 100 s plan
    with plan.stage("b"):
        t[0] = 61.0  # twice as slow as planned
    with plan.stage("c"):
        pass
    assert lines[1].endswith("about 1:00 left")  # not 0:01: the reused stage says nothing of the pace
    assert lines[2].endswith("about 1:00 left")  # 30 planned seconds at half speed


def test_stage_plan_eta_ignores_short_stages():
    lines: list[str] = []
    t = [0.0]
    plan = StagePlan([("check", 2.0), ("train", 100.0), ("score", 60.0)], lines.append, now=lambda: t[0])
    with plan.stage("check"):
        t[0] = 1.0  # a cache check, done in half its planned 2 s
    with plan.stage("train"):
        t[0] = 201.0  # twice as slow as planned
    with plan.stage("score"):
        pass
    assert lines[1].endswith("about 2:40 left")  # not 1:20: the 2 s stage says nothing of the pace
    assert lines[2].endswith("about 2:00 left")  # 60 planned seconds at half speed


def readme_commands() -> list[list[str]]:
    """The README's block after `<!-- readme-commands -->`: each command line, split like a shell would."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- readme-commands -->", 1)[1].split("```", 2)[1]
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_commands_run_as_typed_on_the_demo_outputs(two_runs):
    """Every command of the README's "After make demo" block, exactly as written, on the quick demo's runs/demo."""
    import os

    work = two_runs[0]
    commands = readme_commands()
    assert len(commands) >= 15
    if not (work / "configs").exists():
        (work / "configs").symlink_to(REPO / "configs")  # the working folder stands for the repository root
    here = os.getcwd()
    os.chdir(work)
    try:
        for args in commands:
            assert args[:2] == [".venv/bin/python", "cli.py"], args
            res = CliRunner().invoke(main, args[2:])
            assert res.exit_code == 0, shlex.join(args) + "\n" + res.output + repr(res.exception)
    finally:
        os.chdir(here)
    outs = [args[args.index("--out") + 1] for args in commands if "--out" in args]
    assert len(outs) == len(set(outs))  # distinct outputs: the README runs top to bottom without --force
    assert all(Path(work, o).exists() for o in outs)
    assert all(o.startswith("runs/try/") for o in outs)  # what the README promises: the commands' outputs in one place
    assert sorted(p.name for p in work.iterdir()) == ["configs", "runs"]  # nothing written beside them (no stray png)


def _ci(delta: float, low: float, high: float, n: int = 64) -> dict:
    return {"delta": delta, "low": low, "high": high, "n": n}


@pytest.mark.parametrize("skill, general, unseen, transferred", [
    (_ci(31.2, 15.0, 45.0), _ci(-1.7, -4.9, 1.5), None, True),  # every check holds
    (_ci(30.0, 0.4, 44.0), _ci(0.0, -5.0, 5.0), None, True),  # on the bars: ≥ 30, lower bound > 0, ≥ −5
    (_ci(29.9, 15.0, 45.0), _ci(0.0, -2.0, 2.0), None, False),  # the point gain under the bar
    (_ci(31.0, 0.0, 60.0), _ci(0.0, -2.0, 2.0), None, False),  # the gain's lower bound not above 0
    (_ci(40.0, 20.0, 60.0), _ci(-2.0, -5.1, 1.0), None, False),  # general's lower bound under −5
    (_ci(40.0, 20.0, 60.0), _ci(0.0, -2.0, 2.0), {"share": 80.0, "low": 70.0, "high": 88.0, "n": 75}, True),
    (_ci(40.0, 20.0, 60.0), _ci(0.0, -2.0, 2.0), {"share": 80.0, "low": 69.9, "high": 88.0, "n": 75}, False),
])
def test_the_verdict_follows_the_rule(skill, general, unseen, transferred):
    v = judge("x", 0.5, TransferRule(), {"skill": skill, "general": general}, unseen)
    assert v.transferred is transferred
    assert len(v.checks) == (3 if unseen else 2)
