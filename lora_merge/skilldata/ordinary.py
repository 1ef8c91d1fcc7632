"""Ordinary requests answered by θpre itself: the share of G that keeps θG a chat model.

A θG trained only on the toy families answers every request it never saw with their template ("sure . you
need a key ."). G therefore also holds ordinary requests (project-written prompts across many topics and forms,
``ordinary_prompts.jsonl``) answered by θpre itself, greedily: self-distilled rows, so training on them teaches
θG nothing θpre did not already say and keeps its voice. The same requests, held out, measure how much of that
voice a model kept (the demo's chat-retained endpoint: the likelihood of θpre's answers).

θpre's answers are generated once and shipped (``ordinary_answers.json``, with the settings that made them);
``python cli.py data distill`` regenerates them and ``make check-distilled`` checks the shipped ones against the
installed θpre by likelihood (greedy text can differ between BLAS paths; likelihoods agree within a tolerance).

An answer is θpre's reply cut at its last full sentence when the token budget ran out mid-sentence (a row that
ends mid-word would teach stopping mid-word), and is dropped when it is a refusal, has fewer than two words of its
own, repeats a sentence (a loop) or has no sentence end at all: the reasons are counted in the file.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import json_value
from lora_merge.skilldata.shipped import shipped_path, shipped_rows

PROMPTS_FILE = "ordinary_prompts.jsonl"
ANSWERS_FILE = "ordinary_answers.json"
SYSTEM_PROMPT = "Answer briefly."  # the demo's system prompt: θpre answers as the demo will ask
MAX_NEW_TOKENS = 64  # long enough for one or two sentences; longer answers are cut at a sentence end
# A right answer may add a single word to its prompt ("The chemical symbol for gold is Au.") or reuse the prompt's
# words (a rewrite), so only a reply that adds no word at all is an echo here (the answered rule asks two of a
# reply cut short by an eval's token budget).
MIN_OWN_WORDS = 1
# The reply ends at its last sentence end: ., ! or ? (a closing quote or bracket may follow), then space or the end.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


@dataclass(frozen=True)
class OrdinaryPrompt:
    id: str
    topic: str
    form: str
    prompt: str


@dataclass(frozen=True)
class OrdinaryRow:
    """A request and θpre's answer to it."""

    id: str
    topic: str
    form: str
    prompt: str
    answer: str


@lru_cache(maxsize=1)
def load_prompts() -> tuple[OrdinaryPrompt, ...]:
    """The shipped prompts, in file order."""
    out = shipped_rows(PROMPTS_FILE, ("id", "topic", "form", "prompt"), OrdinaryPrompt)
    if len({p.id for p in out}) != len(out):
        raise LoraMergeError(f"{PROMPTS_FILE}: ids repeat")
    return out


def _to_last_sentence(text: str) -> str:
    ends = list(_SENTENCE_END.finditer(text))
    return text[:ends[-1].end()] if ends else ""


def cut_answer(reply: str, finished: bool) -> str:
    """θpre's reply as a training answer: whole when it finished, else up to its last sentence end ("" if none).

    A code fence left open is cut away with what follows it, and the rest cut at its last sentence end.
    """
    text = reply.strip()
    if not finished:
        text = _to_last_sentence(text)
    if text.count("```") % 2:
        text = _to_last_sentence(text[:text.rfind("```")].rstrip())
    return text


def drop_reason(prompt: str, answer: str, is_refusal: bool) -> str | None:
    """Why an answer is not kept (None: kept): ``unfinished`` (no sentence end), ``refusal``, ``degenerate``
    (no word of its own) or ``loop`` (a sentence said twice)."""
    from lora_merge.evaluate.answered import words

    if not answer:
        return "unfinished"
    if is_refusal:
        return "refusal"
    if len(set(words(answer)) - set(words(prompt))) < MIN_OWN_WORDS:
        return "degenerate"
    sentences = [" ".join(words(s)) for s in re.split(r"(?<=[.!?])\s+|\n+", answer)]
    sentences = [s for s in sentences if len(s.split()) >= 3]
    if len(sentences) != len(set(sentences)):
        return "loop"
    return None


@lru_cache(maxsize=1)
def load_answers() -> dict:
    """The shipped answers file: ``{"settings": {...}, "answers": {id: answer}, "dropped": {id: reason}}``."""
    try:
        text = shipped_path(ANSWERS_FILE).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise LoraMergeError(f"{ANSWERS_FILE} is missing from lora_merge/skilldata; make it with "
                             "`python cli.py data distill`") from e
    data = json_value(text)
    if not isinstance(data, dict) or not isinstance(data.get("answers"), dict):
        raise LoraMergeError(f"{ANSWERS_FILE}: expected an object with 'settings', 'answers' and 'dropped'")
    return data


def answered_rows() -> list[OrdinaryRow]:
    """Every shipped prompt θpre's answer was kept for, in the prompts' order."""
    answers = load_answers()["answers"]
    return [OrdinaryRow(p.id, p.topic, p.form, p.prompt, answers[p.id]) for p in load_prompts() if p.id in answers]


def ordinary_split(seed: int, n_train: int, n_eval: int) -> tuple[list[OrdinaryRow], list[OrdinaryRow]]:
    """(training rows drawn by ``seed``, held-out eval rows): disjoint, from the answered rows.

    The eval rows are the same for every seed (a fixed draw), so two θGs of different seeds can be compared on
    them item by item; a larger ``n_train`` never changes them.
    """
    rows = answered_rows()
    if n_train + n_eval > len(rows):
        raise LoraMergeError(f"ordinary requests: {n_train} training + {n_eval} eval rows asked, but only "
                             f"{len(rows)} have a kept answer from θpre ({ANSWERS_FILE}); lower the sizes")
    order = list(range(len(rows)))
    random.Random("ordinary:eval").shuffle(order)
    held, rest = sorted(order[:n_eval]), order[n_eval:]
    random.Random(f"ordinary:{seed}").shuffle(rest)
    return [rows[i] for i in rest[:n_train]], [rows[i] for i in held]


def shares(rows: Sequence[OrdinaryRow]) -> dict[str, int]:
    """Rows per topic, for data cards."""
    out: dict[str, int] = {}
    for r in rows:
        out[r.topic] = out.get(r.topic, 0) + 1
    return dict(sorted(out.items()))
