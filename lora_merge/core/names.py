"""The one rule for names that become folders (packs, trained models): train, extract and pack import share it.

A name is a single plain path component: letters, digits, ``.``, ``_``, ``+``, ``-``, starting with a letter
or digit, at most 100 characters. So ``../x``, ``/abs``, ``a/b``, ``.hidden`` and control characters are refused
before anything is written, and a name never lands outside the folder it is meant for.
"""

from __future__ import annotations

import re

from lora_merge.core.errors import LoraMergeError

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
RULE_TEXT = "letters, digits, . _ + -, starting with a letter or digit, at most 100 characters"


def is_plain_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RULE.fullmatch(name) is not None


def check_name(name: object, what: str) -> str:
    """``name`` if it is a plain folder name, else a LoraMergeError saying ``what`` was wrong."""
    if not is_plain_name(name):
        raise LoraMergeError(f"{what}: {name!r} is not a plain name ({RULE_TEXT}); it names a folder")
    return name  # type: ignore[return-value]


def split_names(text: str) -> list[str]:
    """'safety, coding' → ['safety', 'coding']."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise LoraMergeError("--adapters needs at least one pack name or path")
    return names
