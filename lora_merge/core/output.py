"""Output folders: every writer in lora_merge builds its result here, so that a failure leaves nothing behind.

One place for the rules every writer follows (fold, extract, train, pack import
and export, eval reports, sweeps, studies):

- the output may not be, contain or lie inside any of the run's inputs
  (``--out models --force`` must never delete ``models/general``): refused
  before anything is touched;
- an existing output needs ``force`` to be replaced;
- the result is written into a marked hidden sibling (``.lora_merge.NAME.tmp-PID``,
  :mod:`lora_merge.core.leftovers`) and renamed into place only when complete;
  what killed runs left beside the output is cleaned first;
- an error, Ctrl-C, SIGTERM or SIGHUP removes the temporary folder; SIGTERM and
  SIGHUP are handled like SIGINT (KeyboardInterrupt) while a write is staged.

Typical use::

    with staged_output(out, force=force, inputs=[general, *packs]) as tmp:
        write_everything_into(tmp)
    # here ``out`` holds the complete result
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.leftovers import MARKER, clean_leftovers, mark, temp_path

PathLike = str | os.PathLike


def overlapping_input(out: PathLike, inputs: Sequence[PathLike | None]) -> Path | None:
    """The first input that ``out`` is, contains or lies inside (after resolving links), else None."""
    o = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        i = Path(given).resolve()
        if o == i or o in i.parents or i in o.parents:
            return Path(given)
    return None


def check_output(out: PathLike, force: bool, inputs: Sequence[PathLike | None] = ()) -> None:
    """Refuse an output that overlaps an input, exists without ``force``, or is a file where a folder goes."""
    out = Path(out)
    clash = overlapping_input(out, inputs)
    if clash is not None:
        relation = ("is" if out.resolve() == clash.resolve() else
                    "contains" if out.resolve() in clash.resolve().parents else "lies inside")
        raise LoraMergeError(f"output {out} {relation} the input {clash}; writing there would destroy what is read. "
                             "Choose an --out outside every input")
    if out.exists() and not force:
        raise LoraMergeError(f"output {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise LoraMergeError(f"output {out} exists and is not a folder")


def new_temp_folder(target: Path, notes: list[str] | None = None, kind: str = "tmp") -> Path:
    """A fresh, marked temporary folder beside ``target``, after cleaning what killed runs left there.

    ``kind`` is ``tmp`` for the result itself, ``folds`` for a sweep's scratch models.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    found = clean_leftovers(target.parent, target.name)
    if notes is not None:
        notes.extend(found)
    tmp = temp_path(target, kind)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return mark(tmp)


def publish(tmp: Path, target: Path, force: bool = False) -> None:
    """Rename a completed temporary folder into place (atomically when the target is new).

    An existing target (``force``) is first moved aside as a marked ``old`` folder,
    then removed; a kill between the two renames is repaired by the next run.
    """
    (tmp / MARKER).unlink(missing_ok=True)
    if target.exists() or target.is_symlink():
        if not force:
            raise LoraMergeError(f"{target} already exists; pass --force to replace it")
        old = temp_path(target, "old")
        os.replace(target, old)
        if old.is_dir():
            mark(old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(tmp, target)


def discard(path: Path) -> None:
    """Remove a temporary folder or file (never a link's target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise KeyboardInterrupt as Ctrl-C does, so cleanup runs for all three."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handle(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def staged_output(out: PathLike, *, force: bool = False, inputs: Sequence[PathLike | None] = (),
                  notes: list[str] | None = None) -> Iterator[Path]:
    """Yield a temporary folder to write ``out`` into; rename it into place when the block ends without error.

    ``inputs`` are every path the run reads: an ``out`` that is, contains or lies
    inside one is refused before anything is touched. ``notes`` collects one line
    per leftover of a killed run that was cleaned.
    """
    out = Path(out)
    check_output(out, force, inputs)
    with interrupt_on_signals():
        tmp = new_temp_folder(out, notes)
        try:
            yield tmp
            publish(tmp, out, force=force)
        except BaseException:
            discard(tmp)
            raise


@contextlib.contextmanager
def staged_file(out: PathLike, *, force: bool = False, inputs: Sequence[PathLike | None] = ()) -> Iterator[Path]:
    """Like :func:`staged_output` for one file (an archive): a temporary sibling file renamed into place."""
    out = Path(out)
    clash = overlapping_input(out, inputs)
    if clash is not None:
        raise LoraMergeError(f"output {out} overlaps the input {clash}; choose an --out outside every input")
    if out.exists() and not force:
        raise LoraMergeError(f"{out} already exists; pass --force to replace it")
    if out.is_dir():
        raise LoraMergeError(f"{out} is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    with interrupt_on_signals():
        try:
            yield tmp
            os.replace(tmp, out)
        except BaseException:
            discard(tmp)
            raise


def write_files(out: Path, files: dict[str, str | bytes], force: bool = False,
                inputs: Sequence[PathLike | None] = ()) -> None:
    """A folder of small files (reports, data splits) staged like every other output."""
    with staged_output(out, force=force, inputs=inputs) as tmp:
        for name, content in files.items():
            target = tmp / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
