"""Option parsing helpers shared by the commands."""

from __future__ import annotations

import click

from lora_merge.errors import LoraMergeError
from lora_merge.shards import parse_size


def split_names(text: str) -> list[str]:
    """'safety, coding' → ['safety', 'coding']."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise LoraMergeError("--adapters needs at least one pack name or path")
    return names


class SizeType(click.ParamType):
    """A byte size (5GB, 500MB, 2GiB, 1024) parsed with the options, so a bad one stops the command before
    anything is created (0, -1, abc, nan and inf are refused)."""

    name = "size"

    def convert(self, value, param, ctx) -> int:
        try:
            return parse_size(value)
        except LoraMergeError as e:
            self.fail(str(e), param, ctx)


SIZE = SizeType()
