"""The safety skill on real prompts: refuse Do-Not-Answer, transfer to HarmBench and past-tense requests.

* ``train``: Do-Not-Answer prompts (split by prompt, stratified by risk area) with refusals in the style that
  fits each (:mod:`~lora_merge.skilldata.refusals`), plus compliance rows for the lookalikes of the training
  categories (:mod:`~lora_merge.skilldata.lookalikes`) so that refusing is not the only thing learned.
* ``in_form`` (metric ``refusal``): the Do-Not-Answer prompts kept out of training, same risk-area mix.
* ``held_out`` (metric ``refusal``): another source (HarmBench behaviours) and another surface form
  (past-tense reformulations), half each where available; any prompt equal to a training prompt is dropped.
* ``lookalike_in_form`` / ``lookalike_held_out`` (metric ``compliance``): lookalikes of the training
  categories held back from training / of categories never trained on.
"""

from __future__ import annotations

import random

from lora_merge.core.errors import LoraMergeError
from lora_merge.skilldata import lookalikes as LK
from lora_merge.skilldata import sources
from lora_merge.skilldata.model import HELD_OUT, IN_FORM, SkillData, Source, finish, make_eval, make_train
from lora_merge.skilldata.refusals import refusal_for
from lora_merge.skilldata.splits import normalise_text, prompt_keys, stratified_split

LOOKALIKE_IN_FORM, LOOKALIKE_HELD_OUT = "lookalike_in_form", "lookalike_held_out"
PROJECT_SOURCE = Source("lora_merge lookalikes", "Apache-2.0 (this project)", "lora_merge/skilldata/lookalikes.jsonl",
                        "written by the project in XSTest's categories")


def _dedupe(items: list, text) -> tuple[list, int]:
    seen, out = set(), []
    for it in items:
        k = normalise_text(text(it))
        if k not in seen:
            seen.add(k)
            out.append(it)
    return out, len(items) - len(out)


def _area_counts(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in items:
        out[p.area] = out.get(p.area, 0) + 1
    return dict(sorted(out.items()))


def _held_out(rng: random.Random, n: int, train_keys: set[str], system: str | None) -> tuple[list[dict], list, int]:
    hb, hb_src = sources.harmbench()
    past, past_src = sources.tense("past")
    dropped = 0
    pools = []
    for fam, lines in (("harmbench", hb), ("past_tense", past)):
        kept, dup = _dedupe([x for x in lines if normalise_text(x) not in train_keys], lambda x: x)
        dropped += dup + sum(normalise_text(x) in train_keys for x in lines)
        pools.append((fam, kept))
    k_hb = min(n // 2, len(pools[0][1]))
    picks = [("harmbench", rng.sample(pools[0][1], k_hb)),
             ("past_tense", rng.sample(pools[1][1], min(n - k_hb, len(pools[1][1]))))]
    rows = [make_eval(p, "refusal", fam, fam, system) for fam, ps in picks for p in ps]
    return rows, [hb_src, past_src], dropped


def _lookalike_splits(rng: random.Random, n_eval: int, system: str | None) -> tuple[list[dict], list[dict], list[dict]]:
    items = LK.lookalikes()
    trainable = [x for x in items if x.category in LK.TRAIN_CATEGORIES]
    held = [x for x in items if x.category in LK.HELD_OUT_CATEGORIES]
    in_form, train = stratified_split(trainable, lambda x: x.category, len(trainable) // 3, rng)
    in_form = stratified_split(in_form, lambda x: x.category, min(n_eval, len(in_form)), rng)[0]
    held = stratified_split(held, lambda x: x.category, min(n_eval, len(held)), rng)[0]
    fam = "lookalike/{}".format
    train_rows = [make_train(x.prompt, x.answer, fam(x.category), fam(x.category), system) for x in train]
    ev = [[make_eval(x.prompt, "compliance", fam(x.category), fam(x.category), system) for x in part]
          for part in (in_form, held)]
    return train_rows, ev[0], ev[1]


def build_safety(seed: int, n_train: int | None, n_eval: int, system: str | None = None) -> SkillData:
    """Safety rows from Do-Not-Answer, HarmBench, past-tense reformulations and the project's lookalikes.

    ``n_train`` refusal rows (None: every Do-Not-Answer prompt not used for eval) and ``n_eval`` rows per eval
    split (fewer where a source has fewer). The lookalike compliance rows come on top of ``n_train``.
    """
    dna, dna_src = sources.do_not_answer()
    dna, dna_dups = _dedupe(dna, lambda p: p.prompt)
    if n_eval < 1 or n_eval >= len(dna):
        raise LoraMergeError(f"safety: --n-eval must be between 1 and {len(dna) - 1} (Do-Not-Answer has {len(dna)} "
                             f"distinct prompts), not {n_eval}")
    rng = random.Random(f"safety:{seed}")
    in_form, rest = stratified_split(dna, lambda p: p.area, n_eval, rng)
    if n_train is not None:
        if not 1 <= n_train <= len(rest):
            raise LoraMergeError(f"safety: --n-train must be between 1 and {len(rest)} (Do-Not-Answer prompts left "
                                 f"after {n_eval} eval prompts), not {n_train}")
        rest = stratified_split(rest, lambda p: p.area, n_train, rng)[0]
    train = [make_train(p.prompt, refusal_for(p.intent, rng), f"donotanswer/{p.area}", "donotanswer", system)
             for p in rest]
    look_train, look_in, look_out = _lookalike_splits(rng, n_eval, system)
    train += look_train
    rng.shuffle(train)
    held, held_srcs, dropped = _held_out(rng, n_eval, prompt_keys(train), system)
    evals = {IN_FORM: [make_eval(p.prompt, "refusal", f"donotanswer/{p.area}", "donotanswer", system)
                       for p in in_form],
             HELD_OUT: held, LOOKALIKE_IN_FORM: look_in, LOOKALIKE_HELD_OUT: look_out}
    forms = {"train": ["donotanswer", *(f"lookalike/{c}" for c in LK.TRAIN_CATEGORIES)],
             "held_out": ["harmbench", "past_tense", *(f"lookalike/{c}" for c in LK.HELD_OUT_CATEGORIES)]}
    extra = {"risk_areas": {"train": _area_counts(rest), IN_FORM: _area_counts(in_form)},
             "refusal_rows": len(rest), "lookalike_train_rows": len(look_train),
             "dropped": {"donotanswer_duplicates": dna_dups, "held_out_equal_to_training_or_duplicate": dropped}}
    return finish("safety", seed, train, evals, [dna_src, *held_srcs, PROJECT_SOURCE], forms, extra)
