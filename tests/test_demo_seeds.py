"""`cli.py demo --seeds N`: the quick demo on N fresh seeds, θpre shared, resumable, and the spread of its gains.

The mean, sd and t-interval are checked against hand computations and published t quantiles; the end-to-end run
(two seeds of the quick demo on a pico Llama) against each seed's own summary.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.demo.seeds import FIRST_SEED, STAMP_FILE, is_done, mean_interval, seed_stamp, spread, t_quantile
from lora_merge.study.config import StudyConfig, TransferRule, load_study_config

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "demo-smollm2.yaml"
CONFIG_SEED = 3  # configs/demo-smollm2.yaml's seed: never one of the spread's


def _demo(out: Path, *extra: str):
    return CliRunner().invoke(main, ["demo", "--quick", "--config", str(CONFIG), "--out", str(out), "--threads", "1",
                                     "--no-progress", *extra])


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    """One `demo --quick --seeds 2` into an empty folder."""
    out = tmp_path_factory.mktemp("seeds") / "demo"
    res = _demo(out, "--seeds", "2")
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, res.output


def _summary(out: Path, seed: int) -> dict:
    return json.loads((out / "seeds" / f"seed-{seed}" / "summary.json").read_text())


def test_each_seed_is_a_whole_demo_with_one_shared_pre(seeds_run):
    out, output = seeds_run
    seeds = [FIRST_SEED, FIRST_SEED + 1]
    assert sorted(p.name for p in out.iterdir()) == ["pre", "seeds"]  # θpre once, beside the seeds
    assert sorted(p.name for p in (out / "seeds").iterdir()) == ["seed-100", "seed-101", "spread.json", "spread.md"]
    packs = []
    for seed in seeds:
        folder = out / "seeds" / f"seed-{seed}"
        assert _summary(out, seed)["seed"] == seed
        assert not (folder / "pre").exists() and (folder / "general" / "config.json").is_file()  # θG per seed
        adapter = json.loads((folder / "adapters/general/skill.json").read_text())["files"]["adapter_model.safetensors"]
        packs.append(adapter)
    assert packs[0] != packs[1]  # G is a draw: each seed trains its own θG
    assert (out / "seeds/spread.md").read_text() in output  # the closing screen prints spread.md
    assert "seeds run now: 2, reused: 0" in output


def test_spread_json_holds_each_seeds_gains_and_their_mean(seeds_run):
    out = seeds_run[0]
    record = json.loads((out / "seeds/spread.json").read_text())
    assert set(record) == {"first_seed", "config_seed", "seeds", "confidence", "rule", "skills"}
    assert record["seeds"] == [100, 101] and record["first_seed"] == FIRST_SEED
    assert record["config_seed"] == CONFIG_SEED and CONFIG_SEED not in record["seeds"]
    assert record["rule"] == load_study_config(CONFIG).rule.model_dump() and record["confidence"] == 0.95
    summaries = [_summary(out, s) for s in record["seeds"]]
    for skill in ("science", "safety"):
        entry = record["skills"][skill]
        assert set(entry) == {"omega", "transferred", "PTM", "CFT"} and entry["omega"] == 8 / 32
        won = [s["seed"] for s in summaries if s["skills"][skill]["transferred"]]
        assert entry["transferred"] == {"count": len(won), "of": 2, "seeds": won}
        want = {"skill", "skill_heldout", "general", "chat", "chat_answered"} | (
            {"lookalike", "lookalike_unseen"} if skill == "safety" else set())
        for method in ("PTM", "CFT"):
            assert set(entry[method]) == want
            rows = [next(r for r in s["rows"] if r["skill"] == skill and r["method"] == method) for s in summaries]
            for endpoint, e in entry[method].items():
                assert set(e) == {"per_seed", "mean", "sd", "low", "high", "n"} and e["n"] == 2
                assert e["per_seed"] == [r["ci"][endpoint]["delta"] for r in rows]
                a, b = e["per_seed"]
                assert e["mean"] == pytest.approx((a + b) / 2, abs=0.01 if endpoint != "chat" else 1e-4)
                assert e["sd"] == pytest.approx(abs(a - b) / math.sqrt(2), abs=0.01 if endpoint != "chat" else 1e-4)
                assert e["low"] <= e["mean"] <= e["high"]


def test_a_second_call_reruns_nothing(seeds_run):
    out = seeds_run[0]
    watched = [out / "seeds" / f"seed-{s}" / f for s in (100, 101) for f in ("summary.json", "adapters/science/skill.json")]
    before = [p.stat().st_mtime_ns for p in watched]
    spread_before = (out / "seeds/spread.json").read_text()
    res = _demo(out, "--seeds", "2")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert res.output.count("reusing") == 2 and "[1/10]" not in res.output  # no stage of any demo ran
    assert "seeds run now: 0, reused: 2" in res.output
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert (out / "seeds/spread.json").read_text() == spread_before


def test_a_seed_is_done_only_with_its_summary_and_the_same_settings(tmp_path):
    cfg = StudyConfig(out=tmp_path / "seed-100", seed=100)
    folder = Path(cfg.out)
    folder.mkdir()
    assert not is_done(cfg)
    (folder / "summary.json").write_text(json.dumps({"seed": 100}))
    assert not is_done(cfg)  # no stamp: a run cut short, or one from before the stamp
    (folder / STAMP_FILE).write_text(json.dumps({"seed": 100, "stamp": seed_stamp(cfg)}))
    assert is_done(cfg)
    assert is_done(cfg.model_copy(update={"threads": 2, "out": folder}))  # threads and the folder's name decide nothing
    assert not is_done(cfg.model_copy(update={"grid": [0.5]}))  # another setting: run again
    (folder / "summary.json").write_text(json.dumps({"seed": 101}))
    assert not is_done(cfg)


@pytest.mark.parametrize("p, df, want", [(0.975, 4, 2.7764), (0.975, 1, 12.7062), (0.975, 2, 4.3027),
                                         (0.95, 10, 1.8125), (0.975, 30, 2.0423), (0.995, 5, 4.0321)])
def test_t_quantile_matches_the_published_table(p, df, want):
    assert t_quantile(p, df) == pytest.approx(want, abs=1e-4)


def test_mean_interval_by_hand():
    m = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd √2.5 = 1.58114, half-width t(0.975, 4) · sd / √5 = 2.77645 · 0.70711 = 1.96324
    assert (m.n, m.mean) == (5, 3.0)
    assert m.sd == pytest.approx(1.58114, abs=1e-5)
    assert (m.low, m.high) == (pytest.approx(1.03676, abs=1e-4), pytest.approx(4.96324, abs=1e-4))
    one = mean_interval([7.0])
    assert (one.mean, one.sd, one.low, one.high) == (7.0, None, None, None)
    same = mean_interval([2.0, 2.0, 2.0])
    assert (same.sd, same.low, same.high) == (0.0, 2.0, 2.0)


def _summary_of(seed: int, ptm: float, cft: float, transferred: bool) -> dict:
    def ci(delta: float) -> dict:
        return {"skill": {"delta": delta, "low": delta - 5, "high": delta + 5, "n": 64}}

    return {"seed": seed, "rule": TransferRule().model_dump(),
            "skills": {"science": {"transferred": transferred, "omega": 0.5, "checks": []}},
            "rows": [{"skill": "science", "method": "theta_G", "omega": None, "ci": None},
                     {"skill": "science", "method": "PTM", "omega": 0.25, "ci": ci(99.0)},  # not the rule's ω
                     {"skill": "science", "method": "PTM", "omega": 0.5, "ci": ci(ptm)},
                     {"skill": "science", "method": "CFT", "omega": None, "ci": ci(cft)}]}


def test_spread_of_given_gains_by_hand():
    record = spread({102: _summary_of(102, 30.0, 50.0, True), 100: _summary_of(100, 10.0, 50.0, False),
                     101: _summary_of(101, 20.0, 50.0, False)})
    assert record["seeds"] == [100, 101, 102]
    science = record["skills"]["science"]
    assert science["transferred"] == {"count": 1, "of": 3, "seeds": [102]}
    # 10, 20, 30: mean 20, sd 10, half-width t(0.975, 2) · 10 / √3 = 4.30265 · 5.77350 = 24.84
    assert science["PTM"]["skill"] == {"per_seed": [10.0, 20.0, 30.0], "mean": 20.0, "sd": 10.0, "low": -4.84,
                                       "high": 44.84, "n": 3}
    assert science["CFT"]["skill"] == {"per_seed": [50.0, 50.0, 50.0], "mean": 50.0, "sd": 0.0, "low": 50.0,
                                       "high": 50.0, "n": 3}


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1"], "at least 2"),
    (["--seeds", "0"], "at least 2"),
    (["--seeds", "2", "--first-seed", "2"], "config's own seed 3"),
    (["--seeds", "2", "--seed", "7"], "--seed runs one draw"),
    (["--first-seed", "200"], "--first-seed is for --seeds"),
])
def test_bad_seed_options_are_refused_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "demo"
    res = _demo(out, *args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not out.exists()


def test_seeds_are_refused_for_the_miniature_world(tmp_path):
    out = tmp_path / "mini"
    res = CliRunner().invoke(main, ["demo", "--world", "miniature", "--quick", "--out", str(out), "--seeds", "2"])
    assert res.exit_code == 2 and "--seeds is for the SmolLM2 demo" in res.output, res.output
    assert not out.exists()
