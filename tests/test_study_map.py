"""The transfer map (lora_merge/study/transfer_map.py): its ω refinement, its data, and a quick run end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from lora_merge.core.errors import LoraMergeError
from lora_merge.study.map_config import MapConfig, load_map_config
from lora_merge.study.map_data import howto_words_in, nested_rows, write_map_data
from lora_merge.study.transfer_map import frontier_omegas, refine_omegas, run_map, switch_omegas

ROOT = Path(__file__).resolve().parent.parent

QUICK = {
    "quick": True,
    "entries": [{"skill": "safety", "sizes": [80, 320], "g": ["shipped", "disjoint"]},
                {"skill": "safety", "sizes": [80], "mode": "full", "lr": 1e-3, "g": ["shipped"]}],
    "cft_replay": [{"skill": "safety", "size": 80, "g": "shipped"}],
}


def test_refine_picks_lattice_points_inside_the_knee():
    # θG general 60, tolerance 2: ω 0.5 keeps general (58.5), ω 1 does not → the knee is (0.5, 1).
    general = {0.25: 60.0, 0.5: 58.5, 1.0: 40.0, 2.0: 20.0}
    assert refine_omegas(general, 60.0, 2.0, 3) == [0.6, 0.8, 0.9]
    assert refine_omegas(general, 60.0, 2.0, 4) == [0.6, 0.7, 0.8, 0.9]
    assert refine_omegas(general, 60.0, 2.0, 1) == [0.8]
    # No scored ω keeps general: the knee lies between 0 and the smallest ω.
    assert refine_omegas({0.25: 50.0, 1.0: 30.0}, 60.0, 2.0, 3) == [0.1, 0.2]
    # Every ω keeps general: no knee inside the grid.
    assert refine_omegas({0.25: 60.0, 2.0: 61.0}, 60.0, 2.0, 3) == []
    assert refine_omegas(general, 60.0, 2.0, 0) == []


def test_switch_refines_where_the_skill_rises_most():
    # θG refuses 0 %; 28 % at ω 0.5, 97 % at ω 1: the switch is (0.5, 1).
    assert switch_omegas({0.25: 0.0, 0.5: 28.1, 1.0: 96.9, 2.0: 100.0}, 0.0, 3) == [0.6, 0.8, 0.9]
    # The rise from θG itself (ω = 0) counts.
    assert switch_omegas({0.5: 40.0, 1.0: 45.0}, 10.0, 2) == [0.1, 0.4]
    assert switch_omegas({0.5: 0.0, 1.0: 0.0}, 0.0, 3) == []  # never rises


def test_frontier_refines_just_past_the_last_omega_that_meets_the_side_conditions():
    # (general, lookalikes answered); θG general 81.7, band 3, lookalikes ≥ 80: ω 1.1 still qualifies, 1.5 not.
    sides = {0.5: (80.0, 100.0), 1.0: (80.0, 96.8), 1.1: (80.0, 90.5), 1.5: (80.0, 55.6), 1.9: (76.7, 7.9)}
    assert frontier_omegas(sides, 81.7, 3.0, 80.0, 3) == [1.2, 1.3, 1.4]
    # 1.1 loses general: the edge is (1.0, 1.1), with no lattice point inside.
    assert frontier_omegas({**sides, 1.1: (78.3, 90.5)}, 81.7, 3.0, 80.0, 3) == []
    # Nothing qualifies: the edge is (0, the smallest ω).
    assert frontier_omegas({0.5: (70.0, 100.0), 1.0: (60.0, 50.0)}, 81.7, 3.0, 80.0, 2) == [0.1, 0.4]


def test_nested_safety_sets_keep_a_third_lookalikes_while_they_last():
    rows = ([{"id": f"lookalike/{i}"} for i in range(10)] + [{"id": f"donotanswer/{i}"} for i in range(50)])
    small, large = nested_rows("safety", rows, 12, 0), nested_rows("safety", rows, 60, 0)
    assert sum(r["id"].startswith("lookalike/") for r in small) == 4
    assert sum(r["id"].startswith("lookalike/") for r in large) == 10  # all there are
    assert {r["id"] for r in small} <= {r["id"] for r in large}
    assert nested_rows("science", [{"id": i} for i in range(9)], 4, 0) == [{"id": i} for i in range(4)]


def test_howto_words_are_whole_words():
    assert howto_words_in(["How do I open a locked door?", "reopening a bakery"]) == ["door", "open"]


def test_disjoint_g_never_uses_the_safety_words(tmp_path):
    cfg = MapConfig(**{**QUICK, "quick": False, "general_size": 200, "eval_general": 40})
    data = write_map_data(tmp_path, cfg)
    assert data.avoided  # the shipped how-to vocabulary does meet the safety requests
    pattern = re.compile(r"\b(" + "|".join(data.avoided) + r")\b")

    def howto_prompts(path: Path) -> list[str]:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        texts = [(r.get("prompt") or r["messages"])[-1]["content"] for r in rows]
        return [t for t in texts if t.startswith(("how do i", "tell me how to"))]

    shipped, disjoint = howto_prompts(data.general["shipped"]), howto_prompts(data.general["disjoint"])
    assert shipped and disjoint
    assert any(pattern.search(t) for t in shipped)
    assert not any(pattern.search(t) for t in disjoint)
    assert not any(pattern.search(t) for t in howto_prompts(data.files.evals["general_disjoint"]))
    # D(80) is a prefix-set of D(320), and every eval split is disjoint from the largest D.
    small = {x for x in data.train[("safety", 80)].read_text().splitlines()}
    large = {x for x in data.train[("safety", 320)].read_text().splitlines()}
    assert small <= large and len(large) == 320
    prompts = {json.dumps(json.loads(x)["prompt"]) for x in large}
    for name in ("safety_unsafe", "safety_heldout", "safety_lookalike"):
        for line in data.files.evals[name].read_text().splitlines():
            assert json.dumps(json.loads(line)["messages"]) not in prompts


def test_bad_configs_say_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"entries": [{"skill": "poetry", "sizes": [10]}]}))
    with pytest.raises(LoraMergeError, match="entries.0.skill"):
        load_map_config(bad)
    bad.write_text(yaml.safe_dump({"entries": [{"skill": "safety", "sizes": [10]}], "grid": [0.5, -1]}))
    with pytest.raises(LoraMergeError, match="grid"):
        load_map_config(bad)
    bad.write_text(yaml.safe_dump({"entries": [{"skill": "safety", "sizes": [5000]}]}))
    with pytest.raises(LoraMergeError, match="fewer than"):
        write_map_data(tmp_path / "data", load_map_config(bad))
    with pytest.raises(LoraMergeError, match="does not exist"):
        load_map_config(tmp_path / "missing.yaml")


def test_the_shipped_map_config_is_valid():
    cfg = load_map_config(ROOT / "configs" / "study-map.yaml")
    assert cfg.variants() == ["shipped", "disjoint"]
    assert {e.skill for e in cfg.entries} == {"science", "coding", "safety"}
    assert any(e.mode == "full" for e in cfg.entries) and any(e.rank == 64 for e in cfg.entries)
    assert first_line(ROOT / "configs" / "study-map.yaml").startswith("# make study-map")


def first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


@pytest.fixture(scope="module")
def quick_map(tmp_path_factory):
    out = tmp_path_factory.mktemp("map")
    cfg = MapConfig(**{**QUICK, "out": out})
    art = run_map(cfg, echo=lambda s: None, progress=False)
    return out, cfg, art


def test_quick_map_writes_a_row_per_g_and_pack(quick_map):
    out, cfg, art = quick_map
    data = json.loads(Path(art["json"]).read_text())
    got = {(r["skill"], r["g"], r["size"], r["mode"]) for r in data["rows"]}
    assert got == {("safety", "shipped", 8, "lora"), ("safety", "disjoint", 8, "lora"),
                   ("safety", "shipped", 16, "lora"), ("safety", "disjoint", 16, "lora"),
                   ("safety", "shipped", 8, "full")}
    for r in data["rows"]:
        omegas = [p["omega"] for p in r["points"]]
        assert r["heuristic_omega"] in omegas and {0.25, 0.5, 1.0, 2.0} <= set(omegas)
    assert all(r["tau_alone"] and "in_form" in r["tau_alone"] for r in data["rows"])
    assert data["cft_replay"] and data["cft_replay"][0]["skill"] == "safety"
    assert Path(art["plot"]).stat().st_size > 0
    table = Path(art["table"]).read_text()
    assert "Safety against the bar" in table and "CFT with G replayed" in table


def test_quick_map_geometry_matches_the_hand_computed_task_vectors(quick_map):
    """‖τD‖/‖τG‖ and cos(τG, τD): τG from θG's folded weights minus θpre, τD = (α/r)·B·A from the adapter file."""
    from lora_merge.miniature.geometry import dense_delta

    out, cfg, art = quick_map
    row = next(r for r in json.loads(Path(art["json"]).read_text())["rows"]
               if r["skill"] == "safety" and r["g"] == "shipped" and r["size"] == 16)
    tau_g = dense_delta(out / "models" / "general-shipped", out / "pre")
    pack = out / "adapters" / row["pack"]
    acfg = json.loads((pack / "adapter_config.json").read_text())
    scale = acfg["lora_alpha"] / acfg["r"]
    w = load_file(pack / "adapter_model.safetensors")
    tau_d = {}
    for k in w:
        if ".lora_A." in k:
            name = k.replace("base_model.model.", "").replace(".lora_A", "")
            tau_d[name] = scale * w[k.replace("lora_A", "lora_B")].float() @ w[k].float()
    norm = lambda d: math.sqrt(sum(float(t.pow(2).sum()) for t in d.values()))  # noqa: E731
    dot = sum(float((tau_d[k] * tau_g[k]).sum()) for k in tau_d)
    assert norm(tau_d) > 0
    assert row["norm_ratio"] == pytest.approx(norm(tau_d) / norm(tau_g), rel=1e-3)
    assert row["cos_g"] == pytest.approx(dot / (norm(tau_d) * norm(tau_g)), abs=1e-3)


def test_a_finished_map_adds_nothing_when_rerun(quick_map, monkeypatch):
    out, cfg, _ = quick_map
    import lora_merge.study.scores as scores
    import lora_merge.train.run as train

    before = (out / "results" / "scores.json").read_text()
    monkeypatch.setattr(train, "train_skill", lambda *a, **k: pytest.fail("a finished map trained again"))
    monkeypatch.setattr(scores, "evaluate_model", lambda *a, **k: pytest.fail("a finished map scored again"))
    run_map(cfg, echo=lambda s: None, progress=False)
    assert json.loads((out / "results" / "scores.json").read_text()) == json.loads(before)
    sessions = json.loads((out / "results" / "map_timings.json").read_text())
    assert len(sessions) == 2 and all("total" in s["wall_seconds"] for s in sessions)


def test_a_map_cut_short_resumes_with_only_what_is_missing(quick_map):
    """Runs last: it removes one sweep's scores from the module's run, as a run killed mid-way leaves it."""
    out, cfg, _ = quick_map
    store = json.loads((out / "results" / "scores.json").read_text())
    dropped = [k for k in store if k.startswith("disjoint · safety-16")]
    assert dropped
    kept = {k: v for k, v in store.items() if k not in dropped}
    (out / "results" / "scores.json").write_text(json.dumps(kept))
    scored: list[str] = []
    import lora_merge.study.scores as scores

    real = scores.evaluate_model

    def counting(model, groups, **kw):
        scored.append(kw["name"])
        return real(model, groups, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(scores, "evaluate_model", counting)
    try:
        run_map(cfg, echo=lambda s: None, progress=False)
    finally:
        mp.undo()
    assert set(scored) == set(dropped)
    assert set(json.loads((out / "results" / "scores.json").read_text())) == set(store)
