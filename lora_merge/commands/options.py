"""Option parsing helpers shared by the commands."""

from __future__ import annotations

from lora_merge.errors import LoraMergeError


def split_names(text: str) -> list[str]:
    """'safety, coding' → ['safety', 'coding']."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise LoraMergeError("--adapters needs at least one pack name or path")
    return names
