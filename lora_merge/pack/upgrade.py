"""`pack upgrade`: bring a verified format-1 pack to the current manifest format (config hashed too)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.pack.sharing import require_verified
from lora_merge.pack.skillpack import (
    ADAPTER_CONFIG,
    FORMAT_VERSION,
    MANIFEST_NAME,
    load_pack,
    write_manifest,
)


@dataclass(frozen=True)
class Upgraded:
    path: Path
    old_format: int
    new_format: int
    files: dict[str, str]
    config: dict | None  # what the new hash vouches for, shown so the user can check it


def upgrade_pack(path: str | os.PathLike) -> Upgraded:
    """Re-hash a pack that verifies and record every file of HASHED_FILES; refuses a pack that fails."""
    path = Path(path)
    if not (path / MANIFEST_NAME).is_file():
        raise LoraMergeError(f"{path}: no {MANIFEST_NAME} to upgrade (a plain PEFT adapter has no manifest)")
    require_verified(path, f"{path}: not upgraded")
    pack = load_pack(path, verify=True)
    old = pack.manifest.format_version
    digests = pack.digests()  # of the bytes just verified (the config: as parsed and shown below), never re-read
    present = set(digests)
    if old == FORMAT_VERSION and present <= set(pack.manifest.files):
        return Upgraded(path, old, old, pack.manifest.files, None)
    written = write_manifest(path, pack.manifest.model_copy(update={"files": digests, "format_version": FORMAT_VERSION}),
                             rehash=False)
    return Upgraded(path, old, written.format_version, written.files,
                    pack.adapter_config if ADAPTER_CONFIG in present else None)
