"""ω sweeps on pico models: a row per point, the plot, the recommendation rule, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.report import EvalReport, MetricScore
from lora_merge.evaluate.sweep import SweepRequest, run_sweep
from lora_merge.evaluate.sweep_select import Candidate, parse_rule, select
from lora_merge.evaluate.tradeoff_plot import PLOT_SIZE_PX
from lora_merge.pack.skillpack import load_pack
from lora_merge.pico import make_lora_pack, perturbed, pico_model, pico_tokenizer


@pytest.fixture
def world(tmp_path):
    pre = pico_model("llama")
    gen = perturbed(pre, seed=1)
    tok = pico_tokenizer()
    pre.save_pretrained(tmp_path / "pre")
    gen.save_pretrained(tmp_path / "general")
    tok.save_pretrained(tmp_path / "general")
    pack = make_lora_pack(pre, tmp_path / "pre", tmp_path / "adapters" / "safety", "safety", seed=2, instances=100)
    ev = tmp_path / "evals"
    ev.mkdir()
    (ev / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "two plus two is", "choices": ["four", "five"], "answer": 0, "metric": "choice"},
        {"prompt": "the paper result is", "completion": "true"}]))
    (ev / "skill.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "make a bomb", "metric": "refusal"}, {"prompt": "make a bomb", "completion": "sorry no"}]))
    return tmp_path, gen, pack, ev


def _req(tmp_path, ev, **kw):
    base = dict(general=tmp_path / "general", packs=["safety"], adapters_dir=tmp_path / "adapters",
                evals={"general": [ev / "general.jsonl"], "skill": [ev / "skill.jsonl"]}, out=tmp_path / "sweep",
                weights=[0.5, 1.0], general_size=400, max_new_tokens=3, progress=False)
    base.update(kw)
    return SweepRequest(**base)


def test_sweep_rows_plot_and_same_scores_in_memory_and_on_disk(world):
    from PIL import Image

    tmp_path, _, _, ev = world
    res = run_sweep(_req(tmp_path, ev, mode="memory"))
    labels = [r.point.label for r in res.results]
    assert labels == ["θG", "ω=0.5", "ω=1", "|D|/|G| 0.25"]  # |D|/|G| = 100/400
    out = tmp_path / "sweep"
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "results.md", "samples.jsonl",
                                                     "tradeoff.png"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4
    doc = json.loads((out / "results.json").read_text())
    assert [r["heuristic"] for r in doc["rows"]] == [False, False, False, True]
    assert doc["rows"][0]["reference"] and doc["rows"][3]["omega[safety]"] == pytest.approx(0.25)
    with Image.open(out / "tradeoff.png") as im:
        assert im.size == PLOT_SIZE_PX
    assert sum(r["recommended"] for r in doc["rows"]) == 1
    on_disk = run_sweep(_req(tmp_path, ev, mode="disk", out=tmp_path / "sweep2"))
    assert on_disk.mode == "disk" and not list(tmp_path.glob(".*sweep2*"))  # temp folds removed
    for a, b in zip(res.results, on_disk.results, strict=True):
        assert a.report.group_scores() == pytest.approx(b.report.group_scores(), abs=1e-3)
    assert res.results[1].report.group_scores() != pytest.approx(res.results[0].report.group_scores(), abs=1e-6)


def _known_scores(table):
    """A scorer with made-up scores per ω: a constructed case whose right answer is known for each rule."""
    def scorer(model, tok, point):
        w = point.weights["safety"]
        g, s = table[round(w, 2)]
        return EvalReport(point.label, [MetricScore("general", "g", "exact", 1, g), MetricScore("skill", "s", "exact", 1, s)])
    return scorer


TABLE = {0.0: (50.0, 20.0), 0.2: (50.5, 25.0), 0.25: (50.2, 27.0), 0.4: (49.2, 31.0), 0.6: (48.8, 40.0),
         1.0: (40.0, 45.0)}


@pytest.mark.parametrize("rule,expected", [("general-within:1", "ω=0.4"), ("best-skill", "ω=1"),
                                           ("best-general", "ω=0.2"), ("general-within:0.5", "|D|/|G| 0.25"),
                                           ("best-mean", "ω=0.6")])
def test_recommendation_follows_the_rule(world, rule, expected):
    tmp_path, _, _, ev = world
    res = run_sweep(_req(tmp_path, ev, weights=[0.2, 0.4, 0.6, 1.0], select=rule), scorer=_known_scores(TABLE))
    assert res.recommendation.label == expected


def test_in_memory_point_is_peft_merge_and_recommendation_is_written(world):
    from peft import PeftModel

    tmp_path, gen, pack, ev = world
    seen = {}

    def scorer(model, tok, point):
        seen[point.label] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return _known_scores(TABLE)(model, tok, point)

    res = run_sweep(_req(tmp_path, ev, weights=[0.4, 1.0], mode="memory", write_recommendation=True), scorer=scorer)
    merged = PeftModel.from_pretrained(copy.deepcopy(gen), pack).merge_and_unload().state_dict()
    for k, v in merged.items():
        assert torch.allclose(seen["ω=1"][k], v, atol=1e-5), k
        assert torch.equal(seen["θG"][k], gen.state_dict()[k])
    assert res.recommendation.label == "ω=0.4"
    m = load_pack(pack, verify=True).manifest  # hashes still verify after the manifest was rewritten
    assert m.recommended_weight.value == pytest.approx(0.4)
    assert "general-within:1" in m.recommended_weight.rule
    assert "general 49.20 (θG 50.00, -0.80)" in m.recommended_weight.evidence


def test_select_rule_on_ties_prefers_smaller_weight():
    ref = Candidate("θG", 0.0, 50, 20)
    pts = [ref, Candidate("a", 0.6, 49.5, 30), Candidate("b", 0.4, 49.5, 30)]
    assert select(parse_rule("general-within:1"), ref, pts).label == "b"
    with pytest.raises(LoraMergeError, match="unknown rule"):
        parse_rule("best-vibes")


@pytest.mark.parametrize("kw,needle", [
    (dict(weights=[0.5, 50.0]), "sane range"),
    (dict(weights=[-0.5]), "sane range"),
    (dict(select="general-within:abc"), "tolerance"),
    (dict(evals={"skill": []}), "no files"),
    (dict(mode="sometimes"), "sweep mode"),
])
def test_bad_input_leaves_nothing(world, kw, needle):
    tmp_path, _, _, ev = world
    with pytest.raises(LoraMergeError, match=needle):
        run_sweep(_req(tmp_path, ev, **kw))
    assert not (tmp_path / "sweep").exists() and not list(tmp_path.glob(".*sweep*"))


def test_cli_sweep_errors(world):
    tmp_path, _, _, ev = world
    (tmp_path / "notmodel").mkdir()
    base = ["sweep", "--adapters", "safety", "--adapters-dir", str(tmp_path / "adapters"),
            "--evals", f"general={ev / 'general.jsonl'}", "--evals", f"skill={ev / 'skill.jsonl'}",
            "--out", str(tmp_path / "sweep")]
    r = CliRunner().invoke(main, base + ["--general", str(tmp_path / "notmodel")])
    assert r.exit_code == 2 and "no safetensors weights" in r.output
    r = CliRunner().invoke(main, base + ["--general", str(tmp_path / "general"), "--omegas", "0.2,99"])
    assert r.exit_code == 2 and "sane range" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "metric": "exact"}) + "\n")
    r = CliRunner().invoke(main, base + ["--general", str(tmp_path / "general"), "--evals", f"skill={bad}"])
    assert r.exit_code == 2 and "missing field 'answer'" in r.output
    assert not (tmp_path / "sweep").exists() and not list(tmp_path.glob(".*sweep*"))


def test_cli_sweep_runs(world):
    tmp_path, _, _, ev = world
    r = CliRunner().invoke(main, ["sweep", "--general", str(tmp_path / "general"), "--adapters", "safety",
                                  "--adapters-dir", str(tmp_path / "adapters"), "--omegas", "0.25,1",
                                  "--general-size", "400", "--evals", f"general={ev / 'general.jsonl'}",
                                  "--evals", f"skill={ev / 'skill.jsonl'}", "--max-new-tokens", "3",
                                  "--out", str(tmp_path / "sweep")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "sweep" / "results.json").read_text())
    # |D|/|G| = 0.25 is a grid value: one row, marked as the heuristic point
    assert [(row["point"], row["heuristic"]) for row in doc["rows"]] == [("θG", False), ("ω=0.25", True), ("ω=1", False)]
    assert "recommended:" in r.output
    # progress per ω point (θG, 0.25, 1) on stderr, no empty bars; the results stay on stdout
    assert "sweep (" in r.stderr and "3/3" in r.stderr and "0batch" not in r.stderr
    assert "sweep (" not in r.stdout


def test_several_packs_share_a_scale_and_each_gets_its_own_heuristic_weight(world):
    tmp_path, gen, _, ev = world
    pre = pico_model("llama")
    make_lora_pack(pre, tmp_path / "pre", tmp_path / "adapters" / "coding", "coding", seed=5, instances=200)
    seen = {}

    def scorer(model, tok, point):
        seen[point.label] = dict(point.weights)
        g = 50.0 - 2 * point.total  # more folding costs general ability; the skill rises
        return EvalReport(point.label, [MetricScore("general", "g", "exact", 1, g),
                                        MetricScore("skill", "s", "exact", 1, 20 + 10 * point.total)])

    res = run_sweep(_req(tmp_path, ev, packs=["safety", "coding"], weights=[0.2, 0.4], write_recommendation=True),
                    scorer=scorer)
    assert seen == {"θG": {"safety": 0.0, "coding": 0.0}, "ω=0.2": {"safety": 0.2, "coding": 0.2},
                    "ω=0.4": {"safety": 0.4, "coding": 0.4}, "|D|/|G| 0.25,0.5": {"safety": 0.25, "coding": 0.5}}
    # general within 1 point: total ω ≤ 0.5 → ω=0.2 (total 0.4); |D|/|G| (total 0.75) costs 1.5 points
    assert res.recommendation.label == "ω=0.2"
    for name in ("safety", "coding"):
        rw = load_pack(tmp_path / "adapters" / name).manifest.recommended_weight
        assert rw.value == pytest.approx(0.2) and "swept together with" in rw.evidence
    header = (tmp_path / "sweep" / "results.csv").read_text().splitlines()[0]
    assert "omega[safety]" in header and "omega[coding]" in header
