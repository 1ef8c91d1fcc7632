"""Training data: local files (or rows in memory) in a chat or prompt/completion format.

Accepted rows (every row of one source has the same format):

- chat: ``{"messages": [{"role": "user", "content": …}, …, {"role": "assistant", "content": …}]}``; the last
  message must be the assistant's. The final assistant turn is trained; earlier turns are context.
- prompt/completion, plain text: ``{"prompt": "…", "completion": "…"}``.
- prompt/completion, conversational: ``{"prompt": [messages…], "completion": [{"role": "assistant", …}]}``.

Every row is normalised to ``{"prompt", "completion"}`` so that TRL trains on completions only. Files: .jsonl,
.json (a list of rows), .parquet, .csv (plain-text prompt/completion columns). Other keys in a row are ignored.
A malformed row is a :class:`LoraMergeError` naming the file, the row (1-based) and what is wrong.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import InvalidJSON, json_lines, json_value

ROLES = {"system", "user", "assistant", "tool"}
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
Format = Literal["text", "chat"]
DataSource = str | os.PathLike | Sequence[dict]


@dataclass
class SkillData:
    """Normalised rows of one source, with where they came from."""

    rows: list[dict]
    format: Format
    source: str
    sha256: str | None = None
    path: str | None = None

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class TrainingMix:
    """What one run trains on: the rows and the count from each source (|D|, |G|, replay)."""

    rows: list[dict]
    format: Format
    counts: dict[str, int] = field(default_factory=dict)
    sources: dict[str, SkillData] = field(default_factory=dict)


def chat_turns(prompt: str, system: str | None = None) -> list[dict]:
    """The chat turns that ask ``prompt``: a system turn first when ``system`` is given."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]


def chat_training_row(prompt: str, answer: str, system: str | None = None) -> dict:
    """A conversational prompt/completion training row: the trainer applies the model's chat template."""
    return {"prompt": chat_turns(prompt, system), "completion": [{"role": "assistant", "content": answer}]}


def _bad(source: str, row: int, what: str) -> LoraMergeError:
    return LoraMergeError(f"{source}: row {row}: {what}")


def _messages(value: object, source: str, row: int, key: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad(source, row, f"{key!r} must be a non-empty list of {{'role', 'content'}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _bad(source, row, f"{key}[{i}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise _bad(source, row, f"{key}[{i}] has role {m['role']!r}; use one of {', '.join(sorted(ROLES))}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def normalise_row(raw: object, source: str, row: int) -> tuple[Format, dict]:
    """One raw row → (format, {"prompt", "completion"}), or an error naming the row."""
    if not isinstance(raw, dict):
        raise _bad(source, row, f"expected an object, got {type(raw).__name__}")
    if "messages" in raw:
        msgs = _messages(raw["messages"], source, row, "messages")
        if msgs[-1]["role"] != "assistant":
            raise _bad(source, row, "the last message must be the assistant's (it is what the model learns to say)")
        if len(msgs) < 2:
            raise _bad(source, row, "a conversation needs a prompt message before the assistant's answer")
        return "chat", {"prompt": msgs[:-1], "completion": msgs[-1:]}
    if "prompt" in raw and "completion" in raw:
        p, c = raw["prompt"], raw["completion"]
        if isinstance(p, str) and isinstance(c, str):
            if not c:
                raise _bad(source, row, "'completion' is empty: there is nothing to learn")
            return "text", {"prompt": p, "completion": c}
        if isinstance(p, list) and isinstance(c, list):
            prompt, completion = _messages(p, source, row, "prompt"), _messages(c, source, row, "completion")
            if any(m["role"] != "assistant" for m in completion):
                raise _bad(source, row, "every 'completion' message must have role 'assistant'")
            return "chat", {"prompt": prompt, "completion": completion}
        raise _bad(source, row, "'prompt' and 'completion' must both be strings or both be message lists")
    keys = ", ".join(sorted(map(str, raw))) or "none"
    raise _bad(source, row, f"has neither 'messages' nor 'prompt' + 'completion' (keys: {keys})")


def read_json_lines(path: Path) -> list[object]:
    """Every row of a JSON-lines file, rows ending at "\\n" only; a bad row is a :class:`LoraMergeError` naming it."""
    rows = []
    for n, line in json_lines(path.read_text(encoding="utf-8")):  # rows end at "\n" only, never at U+2028
        try:
            rows.append(json_value(line))
        except InvalidJSON as e:
            raise LoraMergeError(f"{path}: row {len(rows) + 1} (line {n}) is not valid JSON: {e.msg}") from None
    return rows


def _all_strings(path: Path):
    """CSV cells are text: without this "4" would come back as the number 4."""
    import csv

    from datasets import Features, Value

    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    return Features({name: Value("string") for name in header})


def _read_raw(path: Path) -> list[object]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return read_json_lines(path)
        if suffix == ".json":
            try:
                data = json_value(path.read_text(encoding="utf-8"))
            except InvalidJSON as e:
                at = f", line {e.lineno}" if e.lineno is not None else ""
                raise LoraMergeError(f"{path}: not valid JSON ({e.msg}{at}); a .json file holds a list of rows (use "
                                     ".jsonl for one row per line)") from None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise LoraMergeError(f"{path}: a .json data file must hold a list of rows")
            return data
        from datasets import Dataset

        if suffix == ".parquet":
            return Dataset.from_parquet(str(path)).to_list()
        if suffix == ".csv":
            return Dataset.from_csv(str(path), features=_all_strings(path), keep_default_na=False).to_list()
    except UnicodeDecodeError as e:
        raise LoraMergeError(f"{path}: not UTF-8 text ({e.reason})") from None
    except LoraMergeError:
        raise
    except Exception as e:  # pyarrow / pandas parse errors: say which file
        raise LoraMergeError(f"{path}: cannot read as {suffix[1:]} ({type(e).__name__}: {e})") from None
    raise LoraMergeError(f"{path}: unknown data format {suffix or '(no suffix)'}; use one of {', '.join(SUFFIXES)}")


def load_data(source: DataSource, label: str = "data") -> SkillData:
    """Load and normalise one source: a file path, or rows already in memory."""
    from lora_merge.pack.skillpack import sha256_file

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise LoraMergeError(f"{label} file {path} does not exist")
        raw, name, digest = _read_raw(path), str(path), sha256_file(path)
    else:
        raw, name, digest, path = list(source), f"{label} (in memory)", None, None
    if not raw:
        raise LoraMergeError(f"{name}: holds no rows")
    rows, first = [], None
    for i, r in enumerate(raw, 1):
        fmt, row = normalise_row(r, name, i)
        if first is None:
            first = fmt
        elif fmt != first:
            raise _bad(name, i, f"is a {fmt} row but row 1 is a {first} row; use one format per file")
        rows.append(row)
    return SkillData(rows, first, name, digest, str(path) if path else None)


def mix(parts: dict[str, SkillData], extra: dict[str, SkillData] | None = None) -> TrainingMix:
    """Concatenate sources (RT: G ∪ D; CFT: D + replay), which must share one format."""
    sources = {**parts, **(extra or {})}
    formats = {name: d.format for name, d in sources.items()}
    if len(set(formats.values())) > 1:
        listed = ", ".join(f"{n} is {f}" for n, f in formats.items())
        raise LoraMergeError(f"the training sources mix formats ({listed}); convert them to one format")
    rows = [r for d in sources.values() for r in d.rows]
    fmt = next(iter(formats.values()))
    return TrainingMix(rows, fmt, {n: len(d) for n, d in sources.items()}, sources)


def replay_sample(replay: SkillData, skill_size: int, ratio: float, seed: int) -> SkillData:
    """round(ratio·|D|) rows of general data drawn without replacement (CFT with replay)."""
    if ratio < 0:
        raise LoraMergeError(f"--replay-ratio must be ≥ 0, not {ratio}")
    k = round(ratio * skill_size)
    if k > len(replay):
        raise LoraMergeError(f"--replay-ratio {ratio} asks for {k} replay rows but {replay.source} holds only "
                             f"{len(replay)}; lower the ratio or give a larger replay file")
    picked = random.Random(seed).sample(range(len(replay)), k)
    return SkillData([replay.rows[i] for i in sorted(picked)], replay.format, replay.source, replay.sha256,
                     replay.path)


def count_tokens(dataset) -> int:
    """Tokens actually trained on (after templating and truncation): the sum of ``input_ids`` lengths."""
    return int(sum(len(ids) for ids in dataset["input_ids"]))
