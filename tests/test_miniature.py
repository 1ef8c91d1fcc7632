"""The miniature study: `cli.py demo --quick` end to end, and the artefacts it must leave behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.miniature.build import write_world
from lora_merge.miniature.config import load_config
from lora_merge.miniature.world import SKILLS, WorldSizes

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick study in a temporary folder (its own cache, so θpre is built here too)."""
    root = tmp_path_factory.mktemp("demo")
    out, adapters, cache = root / "out", root / "adapters", root / "cache"
    res = CliRunner().invoke(main, ["demo", "--world", "miniature", "--config", str(CONFIG), "--quick", "--out", str(out), "--adapters-dir",
                                    str(adapters), "--cache-dir", str(cache), "--threads", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, adapters, cache, res.output, load_config(CONFIG, quick=True)


def test_every_table_row_is_present(quick_run):
    out, _, _, output, cfg = quick_run
    results = json.loads((out / "results.json").read_text())
    grid = cfg.merge.grid
    for skill in SKILLS:
        rows = [r for r in results["rows"] if r["skill"] == skill]
        methods = [r["method"] for r in rows]
        for m in ("θpre", "θG", "CFT", "CFT + replay", "RT"):
            assert methods.count(m) == 1, (skill, m)
        d, g = getattr(cfg.world, skill), cfg.world.general
        for kind in ("PTM LoRA", "PTM full"):
            omegas = sorted(r["omega"] for r in rows if r["method"] == kind)
            assert all(any(abs(o - w) < 1e-9 for o in omegas) for w in grid), (skill, kind, omegas)
            heur = [r for r in rows if r["method"] == kind and r["note"] == "|D|/|G|"]
            assert len(heur) == 1 and abs(heur[0]["omega"] - d / g) < 1e-9
        for r in rows:
            assert {"general", skill, "lookalike"} <= set(r["scores"]), (skill, r["method"])
            assert all(0.0 <= v <= 100.0 for v in r["scores"].values())
    three = [r["method"] for r in results["three_skill"]]
    for kind in ("LoRA", "full"):
        for m in cfg.merge.three_skill_methods:
            assert f"PTM {kind} {m}" in three
    assert {"θG", "CFT", "RT"} <= set(three)
    tables = (out / "tables.md").read_text()
    assert all(f"## {s}" in tables for s in SKILLS) and "## three skills at once" in tables
    assert "tables.md" in output and "[1/" in output  # printed at the end, with a progress line per stage


def test_general_model_learned_the_world(quick_run):
    out, *_ = quick_run
    rows = json.loads((out / "results.json").read_text())["rows"]
    pre = next(r for r in rows if r["method"] == "θpre")["scores"]["general"]
    gen = next(r for r in rows if r["method"] == "θG")["scores"]["general"]
    assert gen > pre, (pre, gen)


def test_plots_are_valid_images(quick_run):
    out, *_ = quick_run
    import matplotlib.image as mpimg

    for name in [f"tradeoff_{s}.png" for s in SKILLS] + ["summary.png"]:
        path = out / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0  # not a blank canvas


def test_packs_are_valid_and_fold_like_peft(quick_run, tmp_path):
    """Every pack verifies; a LoRA pack folded at ω = 1 into θpre equals PEFT's own merge (the oracle)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_merge.pack.skillpack import load_pack
    from lora_merge.pico import state_of

    out, adapters, _, _, cfg = quick_run
    for skill in SKILLS:
        lora, dense = load_pack(adapters / skill), load_pack(adapters / f"{skill}-full")
        assert lora.kind == "lora" and dense.kind == "dense"
        assert lora.instances == getattr(cfg.world, skill) == dense.instances
    base = Path(json.loads((out / "results.json").read_text())["record"]["base"])
    folded = tmp_path / "folded"
    res = CliRunner().invoke(main, ["fold", "--general", str(base), "--adapters", "safety", "--adapters-dir",
                                    str(adapters), "--weights", "1", "--out", str(folded)])
    assert res.exit_code == 0, res.output
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters / "safety")
    expected = merged.merge_and_unload().state_dict()
    got = state_of(folded)
    for k, v in got.items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)
    # And the README's command: two skills into the general model with ω = |D|/|G|.
    res = CliRunner().invoke(main, ["fold", "--general", str(out / "general"), "--adapters", "safety,coding",
                                    "--adapters-dir", str(adapters), "--out", str(tmp_path / "two")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "two" / "lora_merge.json").read_text())
    assert [round(p["weight"], 6) for p in card["packs"]] == [
        round(cfg.world.safety / cfg.world.general, 6), round(cfg.world.coding / cfg.world.general, 6)]


def test_second_run_reuses_the_cached_base(quick_run):
    from lora_merge.miniature.pretrain import pretrain
    from lora_merge.miniature.world import WorldFiles

    out, _, cache, output, cfg = quick_run
    assert "pretraining" in output  # the fixture's run built θpre in its fresh cache
    lines: list[str] = []
    folder, record = pretrain(WorldFiles(out / "world"), cache, cfg.seed, cfg.model, cfg.pretrain,
                              lines.append)
    assert "cached" in lines[0] and len(lines) == 1
    assert str(folder) == json.loads((out / "results.json").read_text())["record"]["base"]
    assert len([p for p in cache.iterdir() if p.name.startswith("base-")]) == 1


def test_world_is_deterministic_and_held_out(tmp_path):
    sizes = WorldSizes(general=50, science=10, coding=10, safety=10, eval_general=10, eval_skill=5, eval_unsafe=5)
    a, b, c = (write_world(tmp_path / n, s, sizes) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    for name in ("general", *SKILLS):
        assert a.train(name).read_bytes() == b.train(name).read_bytes()
    assert a.train("general").read_bytes() != c.train("general").read_bytes()
    train = {json.loads(line)["prompt"][0]["content"] for n in ("general", *SKILLS)
             for line in a.train(n).read_text().splitlines()}
    for ev in (a.root / "evals").glob("*.jsonl"):
        for line in ev.read_text().splitlines():
            assert json.loads(line)["messages"][0]["content"] not in train, ev.name


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\nwrold: {general: 10}\n")
    with pytest.raises(LoraMergeError, match="wrold"):
        load_config(bad)
    with pytest.raises(LoraMergeError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad.write_text("world: {general: 10, sciense: 3}\n")
    with pytest.raises(LoraMergeError, match="sciense"):
        load_config(bad)
