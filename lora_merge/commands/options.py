"""Option parsing helpers shared by the commands."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.errors import LoraMergeError
from lora_merge.hub import resolve_model
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


class ModelType(click.ParamType):
    """A model folder, or ``org/name`` from the local Hugging Face cache (:func:`lora_merge.hub.resolve_model`;
    never downloaded). A reference that is not cached stops the command with a LoraMergeError saying how to get it."""

    name = "model"

    def convert(self, value, param, ctx) -> Path:
        if isinstance(value, Path):
            return value
        return resolve_model(value, param.opts[0] if param is not None and param.opts else "model")


MODEL = ModelType()
