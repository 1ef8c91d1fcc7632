"""Progress with an ETA for multi-stage runs: a stage plan for the whole run.

A :class:`StagePlan` knows every stage's planned cost up front (seconds at the caller's reference rates, a first
guess estimated from token counts); after each finished stage it rescales what is left by how fast the run has actually
gone so far, so the ETA follows the machine it runs on (a busy shared CPU, or a faster one). Each training
run shows its own bar (steps, loss, ETA: :mod:`lora_merge.train.progress`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_merge.core.structured_text import json_lines

REUSED_SHARE = 0.1  # a stage done in under this share of its plan reused earlier work: it says nothing of the pace
# A stage planned shorter than this is mostly fixed costs (a cache check, a file written): its pace says nothing
# of the training and scoring that follow (a cache check that ran at twice its planned pace once halved the whole
# run's ETA: docs/benchmarks.md, "Figures the code cites").
PACE_MIN_PLANNED_S = 5.0


def chat_tokens(path: Path) -> int:
    """Rough token count of a chat JSONL training file (≈ 3.2 characters a token plus the chat markup): what a
    stage plan needs to estimate a training run before any tokenizer is loaded."""
    total = 0
    for _, line in json_lines(path.read_text(encoding="utf-8")):
        row = json.loads(line)
        chars = sum(len(t["content"]) for part in ("prompt", "completion") for t in row.get(part, []))
        total += int(chars / 3.2) + 20
    return total


def jsonl_rows(path: Path) -> int:
    """Non-empty lines of a JSONL file (eval items, training rows)."""
    return sum(1 for _ in json_lines(path.read_text(encoding="utf-8")))  # a row ends at "\n" only


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a duration in seconds."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class StagePlan:
    """Named stages with planned costs; each stage prints ``[k/N] name · elapsed · about T left``."""

    def __init__(self, planned: list[tuple[str, float]], echo: Callable[[str], None] = print,
                 now: Callable[[], float] = time.perf_counter):
        if not planned:
            raise ValueError("a stage plan needs at least one stage")
        self.planned = dict(planned)
        self.order = [name for name, _ in planned]
        self.echo, self.now = echo, now
        self.t0 = now()
        self.done_planned = 0.0  # planned cost of the finished stages that did their work (not reused)
        self.done_actual = 0.0  # their actual seconds
        self.actual: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds of this process (all threads) per stage

    @property
    def elapsed(self) -> float:
        return self.now() - self.t0

    def remaining(self, after: str | None = None) -> float:
        """Seconds left from the start of the stage after ``after`` (None: from the first), rescaled by the pace."""
        start = 0 if after is None else self.order.index(after) + 1
        left = sum(self.planned[n] for n in self.order[start:])
        pace = self.done_actual / self.done_planned if self.done_planned > 0 else 1.0
        return left * pace

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one stage of the plan; prints its header line with the ETA of the whole run."""
        k = self.order.index(name)
        before = self.order[k - 1] if k else None
        self.echo(f"[{k + 1}/{len(self.order)}] {name}  ·  {clock(self.elapsed)} elapsed  ·  "
                  f"about {clock(self.remaining(before))} left")
        t, c = self.now(), time.process_time()
        try:
            yield
        finally:
            self.actual[name] = round(self.now() - t, 1)
            self.cpu[name] = round(time.process_time() - c, 1)
            # A resumed run reuses whole stages in a blink; counting them would make the rest look instant.
            if self.planned[name] >= PACE_MIN_PLANNED_S and self.actual[name] >= REUSED_SHARE * self.planned[name]:
                self.done_planned += self.planned[name]
                self.done_actual += self.actual[name]
