"""Reading a pack's files safely: regular files inside the pack, small JSON read within a cap.

A pack folder is untrusted. Before any of its files is opened it is checked
with ``lstat``: a symbolic link must lead to a regular file inside the pack
(``skill.json -> /dev/zero`` or ``adapter_model.safetensors -> /dev/zero`` is
refused), and devices, fifos and sockets are refused outright (reading a fifo
would block forever). Files are then opened with ``O_NONBLOCK`` and checked
again with ``fstat`` on the open descriptor, so a file swapped for a fifo in
between cannot hang the reader either. JSON files (``skill.json``,
``adapter_config.json``) are refused above :data:`MAX_JSON_BYTES` by their size
and read with a bounded read, so a 1 GiB file of spaces costs nothing.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from lora_merge.core.errors import LoraMergeError

MAX_JSON_BYTES = 1 << 20  # 1 MiB: a real skill.json or adapter_config.json is a few kB


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def check_pack_file(path: Path, pack: Path | None = None) -> Path:
    """The real path of ``path`` after checking it is a regular file inside ``pack`` (default: its folder)."""
    pack = Path(pack) if pack is not None else path.parent
    try:
        st = os.lstat(path)
    except OSError as e:
        raise LoraMergeError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        real = Path(os.path.realpath(path))
        root = Path(os.path.realpath(pack))
        if root != real and root not in real.parents:
            raise LoraMergeError(f"{path}: a symbolic link to {real}, outside the pack; a pack's files lie in its "
                                 "folder (copy the file in instead of linking it)")
        try:
            st = os.stat(real)
        except OSError as e:
            raise LoraMergeError(f"{path}: a symbolic link that cannot be followed ({e.strerror})") from None
        path = real
    if not stat.S_ISREG(st.st_mode):
        raise LoraMergeError(f"{path}: {_kind(st.st_mode)}; a pack holds only regular files")
    return Path(path)


def open_pack_file(path: Path, pack: Path | None = None):
    """A binary file object for a checked pack file (never blocks on a fifo, never follows a link out)."""
    real = check_pack_file(path, pack)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags)
    except OSError as e:
        raise LoraMergeError(f"{path}: cannot open ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # swapped after the check
        os.close(fd)
        raise LoraMergeError(f"{path}: {_kind(mode)}; a pack holds only regular files")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_json_capped(path: Path, what: str, pack: Path | None = None, limit: int = MAX_JSON_BYTES) -> object:
    """Parse a small JSON pack file, refusing it by size before reading it whole."""
    return parse_json(read_capped(path, what, pack, limit), path, what)


def read_capped(path: Path, what: str, pack: Path | None = None, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a small pack file, refused by its size before it is read (a caller that hashes them hashes
    exactly what it parses)."""
    with open_pack_file(path, pack) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise LoraMergeError(f"{path}: {size} bytes is too big for a {what} (the limit is {limit} bytes)")
        data = f.read(limit + 1)  # bounded even if the file grew after the check
    if len(data) > limit:
        raise LoraMergeError(f"{path}: too big for a {what} (the limit is {limit} bytes)")
    return data


def parse_json(data: bytes, path: Path, what: str) -> object:
    """JSON text read from a pack file, every way it can be malformed a clear error naming ``path``."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise LoraMergeError(f"{path}: {what} is not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise LoraMergeError(f"{path}: {what} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise LoraMergeError(f"{path}: {what} nests too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise LoraMergeError(f"{path}: {what} cannot be read ({e})") from None
