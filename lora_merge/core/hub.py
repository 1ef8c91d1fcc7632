"""Hub-style model references: ``org/name`` for a model folder, found in the local Hugging Face cache only.

:func:`resolve_model` is the one resolver every command uses for ``--general`` / ``--base`` / ``--model``:
an existing local folder wins; otherwise a reference shaped like ``org/name`` is looked up in the cache
(``HF_HUB_CACHE``, else huggingface_hub's default) with ``local_files_only`` — lora_merge never downloads.
A reference that is not cached is a :class:`LoraMergeError` saying how to download it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lora_merge.core.errors import LoraMergeError

# huggingface_hub's repo id rule: one "/", letters, digits, "-", "_", "." (no "..", no leading "." or "-").
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


# A snapshot in huggingface_hub's cache: …/models--ORG--NAME/snapshots/REVISION[/…]
_SNAPSHOT = re.compile(r"(?:^|[/\\])models--([A-Za-z0-9][A-Za-z0-9_.-]*?)--([A-Za-z0-9][A-Za-z0-9_.-]*)[/\\]snapshots[/\\]")


def looks_like_repo_id(text: str) -> bool:
    return REPO_ID.fullmatch(text) is not None and ".." not in text


def hub_id(name_or_path: str | None) -> str | None:
    """The Hub repo id a recorded model reference stands for, or None for a local folder.

    A snapshot of the local cache (``…/models--org--name/snapshots/…``, what :func:`resolve_model` turns
    ``org/name`` into) is ``org/name``; a text shaped like a repo id that names no local folder is itself;
    anything else (``/tmp/…``, ``models/pre`` where that folder exists) is a local path, which the Hub cannot
    resolve and which would publish the author's file layout in a shared card.
    """
    if not name_or_path:
        return None
    m = _SNAPSHOT.search(name_or_path)
    if m is not None:
        repo = f"{m[1]}/{m[2]}"
        return repo if looks_like_repo_id(repo) else None
    if looks_like_repo_id(name_or_path) and not Path(name_or_path).exists():
        return name_or_path
    return None


def resolve_model(ref: str | os.PathLike, what: str = "--general") -> Path:
    """The folder ``ref`` names: a local path as is, else the cached snapshot of the Hub repo ``org/name``."""
    text = os.fspath(ref)
    local = Path(text)
    if local.exists() or not looks_like_repo_id(text):
        return local  # a missing plain path is reported by whoever opens it
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or None  # read now, not when huggingface_hub was imported
    try:
        return Path(snapshot_download(text, local_files_only=True, cache_dir=cache))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise LoraMergeError(
            f"{what} {text}: no such local folder, and {text} is not in the local Hugging Face cache "
            f"({cache or 'the default cache'}); lora_merge never downloads. Download it first: hf download {text}"
        ) from None
