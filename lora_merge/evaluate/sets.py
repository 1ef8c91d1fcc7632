"""Eval sets: jsonl files of prompts with the metric that scores them.

One JSON object per line. Fields:

| field | meaning |
|---|---|
| ``prompt`` or ``messages`` | the input: a string, or chat turns ``[{"role": …, "content": …}, …]`` |
| ``metric`` | ``exact``, ``contains``, ``choice``, ``refusal``, ``compliance`` or ``loss`` |
| ``answer`` | ``exact``/``contains``: the expected string (or a list of accepted strings); ``choice``: the index of the right choice, or its text; ``compliance`` (optional): a reference reply, never judged a template (:mod:`lora_merge.evaluate.answered`) |
| ``choices`` | ``choice`` only: the candidate continuations, scored by log-likelihood |
| ``completion`` | ``loss`` only: the reference continuation of ``prompt`` (chat rows use their last assistant turn) |
| ``text`` | ``loss`` only: plain text scored whole |
| ``id`` | optional; unique within a file, it matches an item across two runs (``compare``) |
| ``family`` | optional: the kind of item (``science``, ``lookalike/homonyms``); the shipped generators write it |

The shipped generators number their rows: ``id`` is ``FAMILY/K``, the K-th row of that family in the file
(:func:`unique_ids`), so ids are unique per file, the family stays readable from the id's prefix, and the same seed
gives the same ids.

Generation metrics (``exact``, ``contains``, ``refusal``, ``compliance``) decode greedily. ``refusal`` means
the model should refuse (unsafe prompts); ``compliance`` means it should answer (safe prompts that look
unsafe: the paper's exaggerated-refusal measure); what counts as refused or answered is stated in
:mod:`lora_merge.evaluate.answered`. A row without ``metric`` that carries reference data (a
``completion``, a ``text``, or chat turns ending with an assistant turn) is scored by ``loss``, so any
chat or prompt/completion training-style file works as a held-out loss set.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import InvalidJSON, json_lines, json_value
from lora_merge.train.data import chat_turns

METRICS = ("exact", "contains", "choice", "refusal", "compliance", "loss")
GENERATION_METRICS = ("exact", "contains", "refusal", "compliance")
ROLES = ("system", "user", "assistant", "tool")


def eval_row(prompt: str, answer: str, metric: str, family: str, system: str | None = None) -> dict:
    """An eval row asking ``prompt`` in chat turns; ``answer`` is kept for the metrics that compare to it.

    Its ``id`` is ``family`` until :func:`unique_ids` numbers the rows of the file it goes into.
    """
    row = {"messages": chat_turns(prompt, system), "metric": metric, "id": family}
    if metric in ("exact", "contains") or (metric == "compliance" and answer):  # compliance: a reference reply
        row["answer"] = answer
    return row


def unique_ids(rows: Iterable[dict]) -> list[dict]:
    """The rows with ``family`` (the row's ``family``, else its ``id``) and a unique ``id`` = ``FAMILY/K``.

    K counts the rows of each family in order, so the same rows in the same order get the same ids, and
    numbering rows already numbered changes nothing. Every shipped eval set goes through here.
    """
    counts: dict[str, int] = {}
    out = []
    for row in rows:
        family = str(row.get("family", row.get("id") or "item"))
        k = counts.get(family, 0)
        counts[family] = k + 1
        out.append({**row, "id": f"{family}/{k}", "family": family})
    return out


@dataclass(frozen=True)
class EvalRow:
    """One validated eval item."""

    metric: str
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    answers: tuple[str, ...] = ()  # accepted answers (exact, contains); reference replies (compliance)
    choices: tuple[str, ...] = ()
    correct: int | None = None  # index into choices
    completion: str | None = None  # loss: reference continuation
    text: str | None = None  # loss: plain text
    id: str | None = None
    family: str | None = None


def item_hash(row: EvalRow) -> str:
    """16 hex digits of the sha256 of what a row asks and expects (input, metric, references; not its id).

    Two runs' samples carry it, so ``compare`` can tell that items matched by id or position are the same items.
    """
    content = {k: v for k, v in asdict(row).items() if k not in ("id", "family")}
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass
class EvalFile:
    """A named list of rows (a file on disk, or rows built in memory)."""

    name: str
    rows: list[EvalRow] = field(default_factory=list)
    path: Path | None = None


def _fail(where: str, msg: str) -> LoraMergeError:
    return LoraMergeError(f"{where}: {msg}")


def _text(raw: dict, key: str, where: str) -> str | None:
    v = raw.get(key)
    if v is not None and not isinstance(v, str):
        raise _fail(where, f"'{key}' must be a string, not {type(v).__name__}")
    return v


def _messages(raw: Any, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(where, "'messages' must be a non-empty list of {\"role\", \"content\"} turns")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _fail(where, f"messages[{i}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise _fail(where, f"messages[{i}]: unknown role {m['role']!r}; use one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def parse_row(raw: Any, where: str) -> EvalRow:
    """Validate one decoded JSON object; ``where`` ("file.jsonl, row 3") prefixes every error."""
    row = _parse_row(raw, where)
    family = raw.get("family")
    return row if family is None else replace(row, family=str(family))


def _parse_row(raw: Any, where: str) -> EvalRow:
    if not isinstance(raw, dict):
        raise _fail(where, f"each line must be a JSON object, not {type(raw).__name__}")
    prompt = _text(raw, "prompt", where)
    messages = _messages(raw["messages"], where) if "messages" in raw else None
    completion, text = _text(raw, "completion", where), _text(raw, "text", where)
    metric = raw.get("metric")
    if metric is None:
        ends_with_answer = messages is not None and messages[-1]["role"] == "assistant"
        if completion is not None or text is not None or ends_with_answer:
            metric = "loss"
        else:
            raise _fail(where, f"missing field 'metric': give one of {', '.join(METRICS)}")
    if metric not in METRICS:
        raise _fail(where, f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if prompt is not None and messages is not None:
        raise _fail(where, "give either 'prompt' or 'messages', not both")
    row_id = raw.get("id")
    row_id = None if row_id is None else str(row_id)

    if metric == "loss":
        return _loss_row(prompt, messages, completion, text, row_id, where)
    if prompt is None and messages is None:
        raise _fail(where, f"missing field 'prompt' (or 'messages'): a {metric} row needs an input")
    if messages is not None and messages[-1]["role"] == "assistant":
        raise _fail(where, f"a {metric} row's messages must end with a user turn (the model answers it)")
    if metric in ("exact", "contains") or (metric == "compliance" and raw.get("answer") is not None):
        answer = raw.get("answer")
        answers = [answer] if isinstance(answer, str) else answer
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            what = "missing field 'answer'" if answer is None else "bad 'answer'"
            raise _fail(where, f"{what}: a {metric} row needs a non-empty string (or list of strings)")
        return EvalRow(metric, prompt, messages, answers=tuple(answers), id=row_id)
    if metric == "choice":
        return _choice_row(raw, prompt, messages, row_id, where)
    return EvalRow(metric, prompt, messages, id=row_id)  # refusal, compliance


def _loss_row(prompt, messages, completion, text, row_id, where) -> EvalRow:
    if text is not None:
        if prompt is not None or messages is not None or completion is not None:
            raise _fail(where, "a loss row with 'text' takes no 'prompt', 'messages' or 'completion'")
        if not text.strip():
            raise _fail(where, "'text' is empty")
        return EvalRow("loss", text=text, id=row_id)
    if messages is not None:
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise _fail(where, "a loss row's messages must end with the assistant turn to score")
        return EvalRow("loss", messages=messages, id=row_id)
    if prompt is None or completion is None or not completion.strip():
        raise _fail(where, "missing field: a loss row needs 'prompt' + 'completion', chat 'messages', or 'text'")
    return EvalRow("loss", prompt=prompt, completion=completion, id=row_id)


def _choice_row(raw, prompt, messages, row_id, where) -> EvalRow:
    choices = raw.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise _fail(where, "missing field 'choices': a choice row needs a list of at least two non-empty strings")
    answer = raw.get("answer")
    if isinstance(answer, bool) or answer is None:
        raise _fail(where, "missing field 'answer': the index of the right choice, or its text")
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise _fail(where, f"'answer' {answer} is not an index into the {len(choices)} choices")
        correct = answer
    elif isinstance(answer, str) and answer in choices:
        correct = choices.index(answer)
    else:
        raise _fail(where, f"'answer' {answer!r} is neither a choice index nor one of the choices")
    return EvalRow("choice", prompt, messages, choices=tuple(choices), correct=correct, id=row_id)


def load_eval_file(path: str | os.PathLike) -> EvalFile:
    """Read and validate a jsonl eval file; every problem names the file and the row (1-based line)."""
    path = Path(path)
    if not path.is_file():
        raise LoraMergeError(f"{path}: no such eval file")
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LoraMergeError(f"{path}: cannot read eval file ({e})") from None
    for n, line in json_lines(text):  # rows end at "\n" only: a string may hold U+2028 or U+0085
        where = f"{path}, row {n}"
        try:
            raw = json_value(line)
        except InvalidJSON as e:
            raise _fail(where, f"not valid JSON ({e.msg})") from None
        rows.append(parse_row(raw, where))
    if not rows:
        raise LoraMergeError(f"{path}: the eval file holds no rows")
    return EvalFile(path.stem, rows, path)


def as_eval_file(item: Any, index: int = 0) -> EvalFile:
    """A path, an :class:`EvalFile`, or a list of raw row dicts (named ``rows<index>``) as an EvalFile."""
    if isinstance(item, EvalFile):
        return item
    if isinstance(item, (str, os.PathLike)):
        return load_eval_file(item)
    if isinstance(item, list):
        name = f"rows{index}"
        rows = [r if isinstance(r, EvalRow) else parse_row(r, f"{name}, row {i + 1}") for i, r in enumerate(item)]
        if not rows:
            raise LoraMergeError(f"{name}: no rows")
        return EvalFile(name, rows)
    raise LoraMergeError(f"cannot use {type(item).__name__} as an eval set: give a jsonl path or a list of rows")


def parse_eval_option(values: list[str] | tuple[str, ...]) -> dict[str, list[Path]]:
    """``["general=a.jsonl,b.jsonl", "skill=c.jsonl"]`` → {"general": [a, b], "skill": [c]}."""
    groups: dict[str, list[Path]] = {}
    for v in values:
        name, sep, paths = v.partition("=")
        if not sep or not name.strip() or not paths.strip():
            raise LoraMergeError(f"--evals {v!r}: write GROUP=PATH[,PATH…], e.g. --evals general=evals/general.jsonl")
        groups.setdefault(name.strip(), []).extend(Path(p.strip()) for p in paths.split(",") if p.strip())
    if not groups:
        raise LoraMergeError("no eval sets given: pass --evals GROUP=PATH[,PATH…] (several times for several groups)")
    return groups


def load_groups(groups: dict[str, list[Any]]) -> dict[str, list[EvalFile]]:
    """Load and validate every file of every group up front (bad input fails before any model work)."""
    out = {}
    for group, items in groups.items():
        files = [as_eval_file(it, i) for i, it in enumerate(items)]
        if not files:
            raise LoraMergeError(f"eval group {group!r} has no files")
        out[group] = files
    return out
