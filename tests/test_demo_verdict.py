"""The demo's verdict on hand-built score stores: chat retained in nats per token, the chat check of the rule, and
θG checked against θpre before anything is folded.

Oracles: the token-weighted mean log-likelihood per token computed by hand, and bootstraps whose every resample
gives a value known in advance (a constant shift of each item's loss; two items, whose resamples give three
values with known shares).
"""

from __future__ import annotations

import pytest

from lora_merge.core.errors import LoraMergeError
from lora_merge.demo.verdict import chat_ci, judge, paired_endpoints, rule_text, theta_g_check
from lora_merge.evaluate.intervals import paired_proportion_interval
from lora_merge.study.config import TransferRule
from lora_merge.study.scores import ScoreStore
from lora_merge.study.tasks import SkillSets


def put_chat(store: ScoreStore, label: str, losses: list[float], tokens: list[int], order=None) -> None:
    """A chat (loss) set with each item's sample; ``order``: the positions in which the samples are listed."""
    samples = [{"group": "chat", "file": "chat.jsonl", "id": f"c{i}", "index": i, "metric": "loss", "loss": lo,
                "tokens": t} for i, (lo, t) in enumerate(zip(losses, tokens, strict=True))]
    listed = [samples[i] for i in (order or range(len(samples)))]
    store.data.setdefault(label, {"meta": {}, "sets": {}})["sets"]["chat"] = {
        "group": "chat", "metric": "loss", "n": len(samples), "score": 0.0, "samples": listed}


def put01(store: ScoreStore, label: str, set_name: str, outcomes: list[int], meta: dict | None = None) -> None:
    row = store.data.setdefault(label, {"meta": dict(meta or {}), "sets": {}})
    row["sets"][set_name] = {"group": set_name, "metric": "exact", "n": len(outcomes),
                             "score": 100.0 * sum(outcomes) / len(outcomes),
                             "ids": [f"{set_name}-{i}" for i in range(len(outcomes))], "outcomes": outcomes}


@pytest.fixture
def store(tmp_path) -> ScoreStore:
    return ScoreStore(tmp_path / "scores.json")


def test_chat_retained_is_the_change_in_token_weighted_log_likelihood(store):
    # θG: (1.0·10 + 2.0·30) / 40 = 1.75 nats/token; PTM: (1.5·10 + 2.0·30) / 40 = 1.875; Δ = −1.875 + 1.75.
    put_chat(store, "θG", [1.0, 2.0], [10, 30])
    put_chat(store, "PTM", [1.5, 2.0], [10, 30], order=[1, 0])  # listed in another order: paired by id
    # resamples: item 0 twice → −0.5 (a quarter of them), item 1 twice → 0 (a quarter), one each → −0.125;
    # so the 2.5 % and 97.5 % quantiles are −0.5 and 0
    assert chat_ci(store, "θG", "PTM", 0.95) == {"delta": -0.125, "low": -0.5, "high": 0.0, "n": 2}


def test_a_constant_loss_shift_moves_every_resample_by_as_much(store):
    base = [0.8, 1.2, 2.5, 0.3, 1.9]
    put_chat(store, "θG", base, [4, 9, 2, 7, 5])
    put_chat(store, "PTM", [x + 0.04 for x in base], [4, 9, 2, 7, 5])
    assert chat_ci(store, "θG", "PTM", 0.95) == {"delta": -0.04, "low": -0.04, "high": -0.04, "n": 5}


def test_chat_needs_both_sides_samples(store):
    put_chat(store, "θG", [1.0], [3])
    assert chat_ci(store, "θG", "PTM", 0.95) is None
    store.data["PTM"] = {"meta": {}, "sets": {"chat": {"group": "chat", "metric": "loss", "n": 1, "score": 30.0}}}
    assert chat_ci(store, "θG", "PTM", 0.95) is None  # a score without per-item samples: nothing to pair


def test_chat_on_different_items_is_refused(store):
    put_chat(store, "θG", [1.0, 2.0], [3, 3])
    put_chat(store, "PTM", [1.0], [3])
    with pytest.raises(LoraMergeError, match="rerun the demo"):
        chat_ci(store, "θG", "PTM", 0.95)


def test_paired_endpoints_add_chat_and_replies_answered_where_scored(store):
    sets = SkillSets("science", "science_heldout")
    for label, general, skill in (("θG", [1, 1, 0, 0], [0, 0, 0, 1]), ("PTM", [1, 0, 0, 0], [1, 1, 0, 1])):
        put01(store, label, "general", general)
        put01(store, label, "science", skill)
    assert set(paired_endpoints(store, "PTM", sets, 0.95)) == {"general", "skill"}  # no chat sets, none reported
    put01(store, "θG", "chat_answered", [1, 1, 1, 0])
    put01(store, "PTM", "chat_answered", [1, 1, 0, 0])
    put_chat(store, "θG", [1.0, 2.0], [10, 30])
    put_chat(store, "PTM", [1.5, 2.0], [10, 30])
    ci = paired_endpoints(store, "PTM", sets, 0.95)
    assert list(ci) == ["general", "chat", "chat_answered", "skill"]
    assert ci["chat"] == {"delta": -0.125, "low": -0.5, "high": 0.0, "n": 2}
    iv = paired_proportion_interval([True, True, True, False], [True, True, False, False])
    assert ci["chat_answered"] == {"delta": -25.0, "low": round(iv.low, 1), "high": round(iv.high, 1), "n": 4}


def _ci(delta: float, low: float, high: float, n: int = 50) -> dict:
    return {"delta": delta, "low": low, "high": high, "n": n}


GOOD = {"skill": _ci(40.0, 20.0, 60.0), "general": _ci(0.0, -2.0, 2.0)}


@pytest.mark.parametrize("margin, chat, checks, transferred", [
    (None, _ci(-0.3, -0.5, -0.1), 2, True),  # no margin: chat is not part of the rule
    (0.05, None, 2, True),  # a margin but no chat set scored: the check is just absent
    (0.05, _ci(-0.01, -0.05, 0.03), 3, True),  # on the bar
    (0.05, _ci(-0.01, -0.051, 0.03), 3, False),  # under it
])
def test_the_chat_check_is_there_only_with_a_margin_and_a_chat_interval(margin, chat, checks, transferred):
    ci = {**GOOD, **({"chat": chat} if chat else {})}
    v = judge("science", 0.25, TransferRule(chat_margin=margin), ci, None)
    assert len(v.checks) == checks and v.transferred is transferred
    if checks == 3:
        c = v.checks[2]
        assert c.asks == f"chat retained non-inferior: lower bound ≥ −{margin:g} nats/token"
        assert c.measured == f"{chat['delta']:+.3f} [{chat['low']:+.3f}, {chat['high']:+.3f}], n = 50"


def test_the_verdict_needs_skill_and_general():
    with pytest.raises(LoraMergeError, match="needs both"):
        judge("science", 0.25, TransferRule(chat_margin=0.1), {"general": GOOD["general"],
                                                               "chat": _ci(0.0, -0.01, 0.01)}, None)


def test_the_rule_text_names_chat_only_with_a_margin():
    assert "chat" not in rule_text(TransferRule())
    text = rule_text(TransferRule(chat_margin=0.05))
    assert "chat retained" in text and "≥ −0.05 nats/token" in text


def test_theta_g_check_against_theta_pre(store):
    base = [0.8, 1.2, 2.5, 0.3]
    put_chat(store, "θG", [x + 0.04 for x in base], [4, 9, 2, 7])
    put01(store, "θG", "general", [1, 1, 1, 0])
    assert theta_g_check(store, TransferRule(chat_margin=0.05)) is None  # θpre not scored
    put_chat(store, "θpre", base, [4, 9, 2, 7])
    put01(store, "θpre", "general", [1, 0, 0, 0], {"kind": "θpre"})
    check = theta_g_check(store, TransferRule(chat_margin=0.05))
    iv = paired_proportion_interval([True, False, False, False], [True, True, True, False])
    assert check == {"general": {"delta": 50.0, "low": round(iv.low, 1), "high": round(iv.high, 1), "n": 4},
                     "chat": {"delta": -0.04, "low": -0.04, "high": -0.04, "n": 4}, "holds": True}
    assert theta_g_check(store, TransferRule(chat_margin=0.03))["holds"] is False
    assert theta_g_check(store, TransferRule())["holds"] is None  # no margin: measured, not judged
    del store.data["θG"]["sets"]["chat"]
    assert theta_g_check(store, TransferRule(chat_margin=0.05))["holds"] is None  # no chat interval


def test_theta_g_check_holds_only_under_the_template_ceiling(store):
    put_chat(store, "θG", [1.0, 1.0], [3, 3])
    put_chat(store, "θpre", [1.0, 1.0], [3, 3])
    store.data["θpre"]["meta"] = {"kind": "θpre"}
    # 6 probe answers: 3 the same template reply (why "template"), 3 answered: a template share of 50 %
    whys = ["template", "template", "template", "answered", "answered", "answered"]
    store.data["θG"]["sets"]["probe"] = {"group": "probe", "metric": "compliance", "n": 6, "score": 50.0, "samples": [
        {"id": f"p{i}", "index": i, "family": "probe/ordinary" if i % 2 else "probe/lookalike", "metric": "compliance",
         "correct": why == "answered", "why": why, "output": "sure ." if why == "template" else f"reply {i}"}
        for i, why in enumerate(whys)]}
    check = theta_g_check(store, TransferRule(chat_margin=0.05, template_ceiling=50.0))
    assert check["template"] == 50.0 and check["holds"] is True
    assert theta_g_check(store, TransferRule(chat_margin=0.05, template_ceiling=49.9))["holds"] is False
    assert theta_g_check(store, TransferRule(template_ceiling=49.9))["holds"] is False  # the ceiling alone judges
    assert theta_g_check(store, TransferRule())["holds"] is None
