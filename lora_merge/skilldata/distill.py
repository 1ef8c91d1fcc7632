"""θpre's answers to the ordinary requests: made once (``cli.py data distill``), checked by likelihood after.

:func:`distill` asks the model every prompt of ``ordinary_prompts.jsonl`` greedily and keeps the answers
:mod:`lora_merge.skilldata.ordinary` accepts; :func:`answer_loglik` is the mean log-likelihood per token the model
gives the kept answers, recorded with them so that ``make check-distilled`` can tell whether the installed θpre
still says what the shipped file says, without asking for identical greedy text (which can differ between BLAS
paths on near-ties).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from lora_merge.skilldata.ordinary import (
    MAX_NEW_TOKENS,
    SYSTEM_PROMPT,
    OrdinaryPrompt,
    OrdinaryRow,
    cut_answer,
    drop_reason,
)
from lora_merge.train.data import chat_turns

# Mean log-likelihood per token of the kept answers may move this much between machines (BLAS paths) before
# the check calls θpre changed: a changed model moves it by far more (each fold in the demo moves it by tenths).
LOGLIK_TOLERANCE = 0.02


def _prompt_ids(tokenizer, prompt: str, system: str | None) -> list[int]:
    text = tokenizer.apply_chat_template(chat_turns(prompt, system), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def distill(model, tokenizer, prompts: Sequence[OrdinaryPrompt], system: str | None = SYSTEM_PROMPT,
            max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 16, progress: bool = False) -> dict:
    """θpre's kept answers and why the others were dropped: the content of ``ordinary_answers.json``, but its
    ``settings`` (the caller knows the model's name and hashes)."""
    from lora_merge.evaluate.refusal import RefusalClassifier
    from lora_merge.evaluate.scoring import generate_greedy

    ids = [_prompt_ids(tokenizer, p.prompt, system) for p in prompts]
    replies = generate_greedy(model, tokenizer, ids, batch_size, max_new_tokens, progress=progress)
    classifier = RefusalClassifier()
    answers, dropped = {}, {}
    for p, reply in zip(prompts, replies, strict=True):
        # A reply that used (nearly) the whole budget may have been cut mid-sentence.
        finished = len(tokenizer(reply, add_special_tokens=False)["input_ids"]) < max_new_tokens - 2
        answer = cut_answer(reply, finished)
        why = drop_reason(p.prompt, answer, classifier.is_refusal(reply))
        if why is None:
            answers[p.id] = answer
        else:
            dropped[p.id] = why
    return {"answers": answers, "dropped": dropped, "dropped_counts": dict(Counter(dropped.values()))}


def answer_loglik(model, tokenizer, rows: Sequence[OrdinaryRow], system: str | None = SYSTEM_PROMPT,
                  batch_size: int = 16) -> float:
    """Mean log-likelihood per answer token (token-weighted, nats) the model gives the rows' answers."""
    from lora_merge.evaluate.scoring import continuation_logprobs

    end = tokenizer.eos_token or ""
    pairs = []
    for r in rows:
        context = _prompt_ids(tokenizer, r.prompt, system)
        pairs.append((context, list(tokenizer(r.answer + end, add_special_tokens=False)["input_ids"])))
    scored = continuation_logprobs(model, pairs, batch_size)
    return sum(lp for lp, _ in scored) / max(1, sum(n for _, n in scored))
