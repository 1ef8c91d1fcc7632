"""Leftovers of killed runs: find them, clean them, say what was done.

Every writer in lora_merge builds its result through :mod:`lora_merge.core.output`:
in a hidden folder ``.lora_merge.NAME.tmp-PID`` beside the target, renamed into
place at the end; replacing an existing target first moves that aside as
``.lora_merge.NAME.old-PID``. Both carry a marker file (:data:`MARKER`), so
cleanup only ever touches folders lora_merge made: a user's own
``.results.old-20240101`` is never moved or deleted. A run killed with SIGKILL
cannot clean up after itself, so the next run that writes into the same folder
calls :func:`clean_leftovers`:

- a ``tmp`` folder of a process that no longer runs: an unfinished result,
  removed (it can be as large as a whole model).
- an ``old`` folder of a dead process while ``NAME`` exists: the swap
  finished, only the removal of the old copy was cut short; removed.
- an ``old`` folder of a dead process while ``NAME`` is missing: the run was
  killed between its two renames; the previous ``NAME`` is put back.

Folders of processes that still run are left alone (another run is writing).
A full disk while writing becomes a :class:`LoraMergeError` that says so and
where (:func:`reports_disk_full`), after the writer has removed its partial output.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_merge.core.errors import LoraMergeError

PREFIX = ".lora_merge."  # every temporary name lora_merge makes starts with this
MARKER = ".lora_merge-temporary"  # and every temporary folder holds this file
_LEFTOVER = re.compile(r"^\.lora_merge\.(?P<name>.+)\.(?P<kind>tmp|old|folds)-(?P<pid>\d+)$")


def temp_path(target: Path, kind: str = "tmp", pid: int | None = None) -> Path:
    """The hidden sibling lora_merge uses for ``target``: kind ``tmp`` (being written), ``old`` (being replaced)
    or ``folds`` (a sweep's scratch folds)."""
    return target.parent / f"{PREFIX}{target.name}.{kind}-{os.getpid() if pid is None else pid}"


def mark(folder: Path) -> Path:
    """Put the marker into a temporary folder we made, so that cleanup may later touch it."""
    (folder / MARKER).write_text("made by lora_merge; removed or renamed when its run ends\n")
    return folder


@dataclass(frozen=True)
class Leftover:
    """One hidden folder a run left beside its target."""

    path: Path
    target: str  # NAME
    kind: str  # "tmp" or "old"
    pid: int

    @property
    def owner_alive(self) -> bool:
        return process_alive(self.pid)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (our own process counts as alive)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def find_leftovers(folder: str | os.PathLike, name: str | None = None) -> list[Leftover]:
    """Hidden ``.NAME.tmp-PID`` / ``.NAME.old-PID`` folders in ``folder`` (only those for ``name`` if given)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        m = _LEFTOVER.match(entry.name)
        if not m or (name is not None and m["name"] != name):
            continue
        if entry.is_symlink() or not entry.is_dir() or not (entry / MARKER).is_file():
            continue  # not something we made; never follow or delete it
        found.append(Leftover(entry, m["name"], m["kind"], int(m["pid"])))
    return found


def clean_leftovers(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Clean what killed runs left in ``folder``; return one line per thing found (removed, restored or kept)."""
    folder = Path(folder)
    report = []
    for lo in find_leftovers(folder, name):
        if lo.owner_alive:
            if lo.pid != os.getpid():
                report.append(f"left {lo.path} alone: process {lo.pid} that writes it still runs")
            continue
        target = folder / lo.target
        if lo.kind == "old" and not target.exists() and not target.is_symlink():
            os.replace(lo.path, target)
            (target / MARKER).unlink(missing_ok=True)
            report.append(f"restored {target} from {lo.path.name}: the run (process {lo.pid}) that was replacing "
                          "it was killed between its two renames")
            continue
        shutil.rmtree(lo.path, ignore_errors=True)
        what = {"tmp": "unfinished output", "old": "the replaced previous copy", "folds": "a sweep's scratch folds"}[lo.kind]
        if lo.path.exists():
            report.append(f"could not remove {lo.path} ({what} of killed process {lo.pid}); delete it by hand")
        else:
            report.append(f"removed {lo.path} ({what} of process {lo.pid}, which was killed)")
    return report


# errno values that mean "this file system cannot take more data".
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def disk_error(e: OSError, where: Path) -> LoraMergeError | None:
    """A clear LoraMergeError for a full disk or an unwritable folder, or None for other OS errors."""
    if e.errno in _FULL:
        free = _free_bytes(where)
        return LoraMergeError(
            f"the disk is full: writing into {where} failed ({os.strerror(e.errno)}; {free} free now). Nothing was "
            "left behind: free some space or write somewhere else (--out on another disk), then run again."
        )
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return LoraMergeError(f"cannot write into {where}: {os.strerror(e.errno)}; choose a folder you can write to")
    return None


def reports_disk_full(where: Callable[..., os.PathLike | str]):
    """Decorator: a full disk (or read-only target) inside the call becomes a LoraMergeError naming the folder.

    ``where`` gets the call's arguments and returns the folder being written. The
    decorated function must already remove its own partial output on failure.
    """

    def wrap(func):
        @functools.wraps(func)
        def call(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except OSError as e:
                err = disk_error(e, Path(where(*args, **kwargs)))
                if err is None:
                    raise
                raise err from e

        return call

    return wrap


def _free_bytes(where: Path) -> str:
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return f"{shutil.disk_usage(probe).free / 1e6:.1f} MB"
    except OSError:
        return "unknown space"
