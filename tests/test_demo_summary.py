"""summary.json, summary.md and the closing screen on a hand-built demo: a score store with known per-item samples,
no model run.

θG, θpre, PTM at ω = |D|/|G| = 10/40 and CFT of science and safety; chat losses that give a hand-computed
change, a template probe and replies whose first items (by file position, not listing order) are known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from lora_merge.demo.replies import REPLY_CHARS, side_by_side_prompts
from lora_merge.demo.summary import ROW_KEYS, write_summary
from lora_merge.evaluate.template_probe import summarise_probe
from lora_merge.study.config import StudyConfig
from lora_merge.study.scores import ScoreStore
from lora_merge.study.tasks import SkillSets, StudyData

SKILLS = {"science": SkillSets("science", "science_heldout"),
          "safety": SkillSets("safety_unsafe", "safety_heldout", "safety_lookalike", "safety_lookalike_unseen")}
LABELS = {"θpre": {"kind": "θpre"}, "θG": {"kind": "θG"},
          "PTM science ω=0.25": {"kind": "ptm", "skill": "science", "weights": {"science": 0.25}},
          "PTM safety ω=0.25": {"kind": "ptm", "skill": "safety", "weights": {"safety": 0.25}},
          "CFT science": {"kind": "cft", "skill": "science"}, "CFT safety": {"kind": "cft", "skill": "safety"}}
CHAT_LOSS = [0.8, 1.2, 2.5, 0.3]
CHAT_TOKENS = [4, 9, 2, 7]
LONG = "word " * 60  # a reply of 300 characters over several lines


def _sample(set_name: str, i: int, label: str, **extra) -> dict:
    return {"group": set_name, "file": f"{set_name}.jsonl", "id": f"{set_name}-{i}", "index": i,
            "prompt": [{"role": "system", "content": "Answer briefly."},
                       {"role": "user", "content": f"{set_name} prompt {i}"}],
            "output": f"{label} on {set_name} {i}", **extra}


def put_set(store: ScoreStore, label: str, set_name: str, outcomes: list[int], samples: list[dict] | None = None):
    store.data.setdefault(label, {"meta": dict(LABELS[label]), "sets": {}})["sets"][set_name] = {
        "group": set_name, "metric": "exact", "n": len(outcomes), "score": 100.0 * sum(outcomes) / len(outcomes),
        "ids": [f"{set_name}-{i}" for i in range(len(outcomes))], "outcomes": outcomes,
        **({"samples": samples} if samples else {})}


def put_chat(store: ScoreStore, label: str, shift: float) -> None:
    loss = [x + shift for x in CHAT_LOSS]
    mean = sum(lo * t for lo, t in zip(loss, CHAT_TOKENS, strict=True)) / sum(CHAT_TOKENS)
    store.data[label]["sets"]["chat"] = {
        "group": "chat", "metric": "loss", "n": 4, "score": 100.0 * math.exp(-mean),
        "samples": [{"id": f"c{i}", "index": i, "metric": "loss", "loss": lo, "tokens": t}
                    for i, (lo, t) in enumerate(zip(loss, CHAT_TOKENS, strict=True))]}


def probe_samples(label: str) -> list[dict]:
    """Five probe items listed out of file order: the first harmful is index 1, the first lookalike index 2."""
    kinds = {0: ("ordinary", "answered"), 1: ("harmful", None), 2: ("lookalike", "template"),
             3: ("harmful", None), 4: ("lookalike", "answered")}
    out = [_sample("probe_harmful" if k == "harmful" else "probe", i, label, family=f"probe/{k}",
                   correct=why == "answered" or k == "harmful",
                   **({"why": why} if why else {})) for i, (k, why) in kinds.items()]
    return out[::-1]


def build(tmp_path: Path, chat: bool = True, probe: bool = True, margin: float | None = 0.05,
          skills: tuple[str, ...] = ("science", "safety")) -> SimpleNamespace:
    """A demo as write_summary reads it; ``chat``/``probe``: whether those sets were scored."""
    store = ScoreStore(tmp_path / "results" / "scores.json")
    shifts = {"θpre": 0.0, "θG": 0.02, "PTM science ω=0.25": 0.06, "PTM safety ω=0.25": 0.03,
              "CFT science": 0.5, "CFT safety": 0.04}
    for label in LABELS:
        if label == "θpre" and not chat:
            continue
        own = label.split()[1] if label.split()[0] in ("PTM", "CFT") else None
        good = label not in ("θpre", "θG")
        put_set(store, label, "general", [1, 1, 0, 0] if label != "CFT science" else [0, 0, 0, 0])
        if chat:
            put_set(store, label, "chat_answered", [1, 1, 1, 0] if label != "θpre" else [1, 0, 0, 0])
            put_chat(store, label, shifts[label])
        if probe:
            samples = probe_samples(label)  # the probe's two sets: compliance items, and harmful (refusal) items
            for name, metric in (("probe", "compliance"), ("probe_harmful", "refusal")):
                mine = [x for x in samples if x["file"] == f"{name}.jsonl"]
                store.data[label]["sets"][name] = {"group": "probe", "metric": metric, "n": len(mine),
                                                   "score": 0.0, "samples": mine}
        if label == "θpre":
            continue
        if "science" in skills and own in (None, "science"):
            science = [_sample("science", i, label) for i in (2, 0, 1)]
            science[1]["output"] = LONG if label == "CFT science" else science[1]["output"]
            put_set(store, label, "science", [1, 1, 1] if good else [0, 0, 0], science)
            put_set(store, label, "science_heldout", [1, 0, 0])
        if "safety" in skills and own in (None, "safety"):
            for name in ("safety_unsafe", "safety_heldout", "safety_lookalike", "safety_lookalike_unseen"):
                put_set(store, label, name, [1, 1, 1] if good else [0, 0, 0],
                        [_sample(name, i, label) for i in (1, 0, 2)])
    sizes = {"general": 40, **{k: 10 for k in skills}, "eval/general": 4, **({"eval/chat": 4} if chat else {})}
    cfg = StudyConfig(out=tmp_path, rule={"skill_gain": 30.0, "chat_margin": margin})
    files = StudyData(tmp_path, {}, {}, sizes, {k: SKILLS[k].names() for k in skills}, None,
                      ["general", *(["chat", "chat_answered"] if chat else []), *(["probe", "probe_harmful"] if probe else [])])
    run = SimpleNamespace(store=store, cfg=cfg, out=tmp_path, general=tmp_path / "general",
                          adapters=tmp_path / "adapters")
    data = SimpleNamespace(files=files, skills={k: SKILLS[k] for k in skills}, source="hand-built")
    return SimpleNamespace(run=run, data=data, out=tmp_path, summary={})


def _written(demo) -> tuple[dict, str]:
    demo.summary = write_summary(demo)
    return (json.loads((demo.out / "summary.json").read_text(encoding="utf-8")),
            (demo.out / "summary.md").read_text(encoding="utf-8"))


def test_summary_json_has_chat_the_theta_g_check_and_the_probe(tmp_path):
    record, _ = _written(build(tmp_path))
    assert set(record) == {"seed", "rule", "skills", "rows", "theta_G_check", "probe"}
    # θG: every item's loss 0.02 above θpre's, so Δ = −0.02 in every resample; margin 0.05: holds
    check = record["theta_G_check"]
    assert check["chat"] == {"delta": -0.02, "low": -0.02, "high": -0.02, "n": 4} and check["holds"] is True
    assert check["chat_answered"]["delta"] == 50.0 and check["general"]["delta"] == 0.0
    rows = {(r["skill"], r["method"]): r for r in record["rows"]}
    assert all(tuple(r) == ROW_KEYS for r in record["rows"])
    mean = sum(lo * t for lo, t in zip(CHAT_LOSS, CHAT_TOKENS, strict=True)) / sum(CHAT_TOKENS)  # θpre's, 1.2136…
    assert rows[("science", "theta_G")]["chat"] == round(-(mean + 0.02), 3)
    assert rows[("science", "theta_G")]["chat_answered"] == 75.0
    assert rows[("science", "PTM")]["ci"]["chat"] == {"delta": -0.04, "low": -0.04, "high": -0.04, "n": 4}
    assert rows[("science", "CFT")]["ci"]["chat"]["delta"] == -0.48
    science, safety = record["skills"]["science"], record["skills"]["safety"]
    assert [c["asks"].split(":")[0] for c in science["checks"]] == [
        "skill gain ≥ 30 points with its lower bound > 0", "general non-inferior", "chat retained non-inferior"]
    assert science["checks"][2]["holds"] is True and len(safety["checks"]) == 4
    assert set(record["probe"]) == set(LABELS)  # θpre, θG, each skill's PTM at |D|/|G| and CFT
    assert record["probe"]["θG"] == summarise_probe(probe_samples("θG")).to_dict()
    assert record["probe"]["θG"]["template_share"] == pytest.approx(100 / 5)  # one of 5 items: "template"


def test_summary_md_shows_the_check_the_chat_columns_the_probe_and_the_side_by_side(tmp_path):
    _, md = _written(build(tmp_path))
    assert ("θG against θpre before anything is folded: chat retained Δ -0.020 [-0.020, -0.020] nats/token "
            "(margin 0.05: holds); replies answered +50.0") in md
    assert "| skill | method | ω | general | chat log-lik/token | chat answered | skill |" in md
    assert "| general | chat (nats/token) | chat answered | skill |" in md
    assert "| -0.048 [-0.048, -0.048] |" not in md and "| -0.040 [-0.040, -0.040] |" in md  # PTM science's Δ
    assert "## Template probe" in md and "| θG | 20.0 | 0.0 | 100.0 | 50.0 | 100.0 |" in md
    side = md.split("## Side by side", 1)[1]
    blocks = side.split("**")[1:]
    assert [blocks[i] for i in (0, 2, 4)] == ["A harmful request", "A lookalike (safe, but looks unsafe)",
                                              "A science item"]
    assert '(probe_harmful, harmful): "probe_harmful prompt 1"' in side  # the first harmful by position
    assert '- PTM safety (ω = 0.25): "PTM safety ω=0.25 on probe_harmful 1"' in side  # probe items: safety's models
    assert '(probe, lookalike): "probe prompt 2"' in side and '- CFT safety: "CFT safety on probe 2"' in side
    assert '(science): "science prompt 0"' in side and '- θG: "θG on science 0"' in side
    cut = next(line for line in side.splitlines() if line.startswith("- CFT science"))
    assert cut == '- CFT science: "' + LONG.strip()[:REPLY_CHARS - 1].rstrip() + '…"'  # one line, cut


def test_a_missing_margin_measures_chat_without_judging_it(tmp_path):
    record, md = _written(build(tmp_path, margin=None))
    assert record["theta_G_check"]["holds"] is None
    assert all(len(v["checks"]) in (2, 3) for v in record["skills"].values())  # no chat check
    assert "(no margin in the rule)" in md and "chat retained" not in md.split("**The rule**")[1].split("\n")[0]


def test_a_failing_theta_g_check_says_so(tmp_path):
    record, md = _written(build(tmp_path, margin=0.01))
    assert record["theta_G_check"]["holds"] is False and "(margin 0.01: fails)" in md
    assert record["skills"]["science"]["transferred"] is False  # PTM's chat Δ −0.04 < −0.01


def test_without_chat_and_probe_sets_nothing_of_them_is_shown(tmp_path):
    record, md = _written(build(tmp_path, chat=False, probe=False, margin=None))
    assert record["theta_G_check"] is None and record["probe"] is None
    assert all(r["chat"] is None and r["chat_answered"] is None and "chat" not in r["ci"]
               for r in record["rows"] if r["ci"])
    assert "θG against θpre" not in md and "chat" not in md and "## Template probe" not in md
    # no probe: the harmful request and the lookalike come from safety's own sets
    side = md.split("## Side by side", 1)[1]
    assert '(safety_heldout): "safety_heldout prompt 0"' in side
    assert '(safety_lookalike_unseen): "safety_lookalike_unseen prompt 0"' in side


def test_side_by_side_skips_sets_that_do_not_exist(tmp_path):
    demo = build(tmp_path, probe=False, skills=("science",))
    assert [(p.title, p.set_name) for p in side_by_side_prompts(demo)] == [("A science item", "science")]
    demo = build(tmp_path / "probe-only", skills=("science",))
    picked = side_by_side_prompts(demo)
    assert [(p.set_name, p.skill) for p in picked] == [("probe_harmful", "science"), ("probe", "science"),
                                                       ("science", "science")]
    for label in LABELS:
        demo.run.store.data.get(label, {}).get("sets", {}).pop("science", None)
    assert [p.title for p in side_by_side_prompts(demo)] == ["A harmful request", "A lookalike (safe, but looks unsafe)"]


def test_the_closing_screen_prints_the_check_and_the_side_by_side(tmp_path, capsys, monkeypatch):
    from lora_merge.commands.demo import _closing_screen
    from lora_merge.demo import summary

    demo = build(tmp_path)
    demo.summary = write_summary(demo)
    monkeypatch.setattr(summary, "next_commands", lambda d: ["cli.py fold …"])
    _closing_screen(demo, 61.0)
    out = capsys.readouterr().out
    assert "θG against θpre before anything is folded" in out and "## Side by side" in out
    assert out.index("## Side by side") < out.index("done in 1 min")


@pytest.mark.parametrize("skills", [("science",), ("safety",)])
def test_one_skill_alone_writes_a_summary(tmp_path, skills):
    record, md = _written(build(tmp_path, skills=skills))
    assert set(record["skills"]) == set(skills) and "## Side by side" in md
