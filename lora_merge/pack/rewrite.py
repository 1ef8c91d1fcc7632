"""Changing a pack that already exists: only after `pack verify`'s full check, each file staged and renamed.

A pack folder is untrusted, and a field written into it later (a sweep's recommended ω) must not become a way
out of it: with ``README.md -> ~/.bashrc`` in a pack, writing the card through the link would put the pack's
description into the user's shell start-up file. So every rewrite of an existing pack first runs
:func:`lora_merge.pack.sharing.check_pack`, the checks of `pack verify` (the manifest, the layout, every file a
regular file inside the pack, the hashes, the headers, finite values), and refuses a pack that fails any of
them, naming it and the failure, before anything is written. Every pack of one call is checked before any is
written, so a refusal leaves all of them as they were. The files are then written by
:func:`lora_merge.pack.skillpack.write_manifest`, each staged beside its name and renamed over it
(``core.output.replace_file``): a link inside the pack is replaced by a regular file, its target untouched.

The manifest's hashes and format are kept as verified (``rehash=False``): a rewrite never blesses a file that
changed after the check, nor turns a format-1 pack into format 2; `pack upgrade` is the one writer that
re-hashes an existing pack, and only after the same check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lora_merge.pack.sharing import require_verified
from lora_merge.pack.skillpack import MANIFEST_NAME, Manifest, load_manifest, write_manifest


def check_rewritable(paths: Sequence[Path], what: str) -> None:
    """Refuse (LoraMergeError naming the pack and the failed check) any pack that fails `pack verify`'s checks."""
    for path in paths:
        require_verified(Path(path), f"{what}: {path}: nothing written")


def rewrite_manifests(changes: Sequence[tuple[Path, Mapping[str, Any]]], what: str) -> list[Manifest]:
    """Set manifest fields in existing packs: ``changes`` holds (pack folder, {field: value}) pairs.

    Every pack is checked (:func:`check_rewritable`) before any is written; skill.json and README.md are then
    staged and renamed, the recorded hashes and format kept as they were verified.
    """
    check_rewritable([path for path, _ in changes], what)
    updated = [(Path(path), load_manifest(Path(path) / MANIFEST_NAME).model_copy(update=dict(update)))
               for path, update in changes]
    return [write_manifest(path, manifest, rehash=False) for path, manifest in updated]
