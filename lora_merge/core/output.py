"""Output folders: every writer in lora_merge builds its result here, so that a failure leaves nothing behind.

One place for the rules every writer follows (fold, extract, train, pack import
and export, eval reports, sweeps, studies):

- the output may not be, contain or lie inside any of the run's inputs
  (``--out models --force`` must never delete ``models/general``): refused
  before anything is touched, and so is one that is or holds the working directory;
- an existing output needs ``force`` to be replaced, and ``force`` replaces only an
  empty folder or an earlier output of the writer's kind (:mod:`lora_merge.core.output_kinds`);
- the result is written into a marked hidden sibling (``.lora_merge.NAME.tmp-PID``,
  :mod:`lora_merge.core.leftovers`) and renamed into place only when complete;
  what killed runs left beside the output is cleaned first;
- an error, Ctrl-C, SIGTERM or SIGHUP removes the temporary folder; SIGTERM and
  SIGHUP are handled like SIGINT (KeyboardInterrupt) while a write is staged;
- one file rewritten in a folder that already exists (a pack's ``skill.json`` and
  ``README.md``) is staged beside it and renamed over it (:func:`replace_file`), so
  a link in its place is replaced, never written through.

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
from lora_merge.core.leftovers import MARKER, clean_leftovers, disk_error, mark, temp_path
from lora_merge.core.output_kinds import OutputKind, check_replaceable, cwd_refusal

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


def check_output(out: PathLike, force: bool, inputs: Sequence[PathLike | None] = (), *,
                 kind: OutputKind | None = None, origin: str | None = None) -> None:
    """Refuse an output that overlaps an input or the working directory, is a file where a folder goes, exists
    without ``force``, or exists and is not an earlier output of ``kind`` nor empty (``--force`` replaces only
    those: :mod:`lora_merge.core.output_kinds`). ``origin`` (``--out``, a recipe's ``out:``) is named in refusals."""
    out = Path(out)
    where = f"{out} (from {origin})" if origin else str(out)
    clash = overlapping_input(out, inputs)
    if clash is not None:
        relation = ("is" if out.resolve() == clash.resolve() else
                    "contains" if out.resolve() in clash.resolve().parents else "lies inside")
        raise LoraMergeError(f"output {where} {relation} the input {clash}; writing there would destroy what is "
                             "read. Choose an --out outside every input")
    refusal = cwd_refusal(out, origin)
    if refusal is not None:
        raise LoraMergeError(refusal)
    if out.exists() and not out.is_dir():
        raise LoraMergeError(f"output {where} exists and is not a folder")
    if out.exists():
        check_replaceable(out, kind, origin)  # said before "pass --force", which would not help
    if out.exists() and not force:
        raise LoraMergeError(f"output {where} already exists; pass --force to replace it")


def new_temp_folder(target: Path, notes: list[str] | None = None, kind: str = "tmp") -> Path:
    """A fresh, marked temporary folder beside ``target``, after cleaning what killed runs left there.

    ``kind`` is ``tmp`` for the result itself, ``folds`` for a sweep's scratch models.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a parent folder goes, a read-only or busy place: one line, not a traceback
        raise disk_error(e, target.parent) or LoraMergeError(f"cannot create {target.parent}: {e.strerror}") from None
    found = clean_leftovers(target.parent, target.name)
    if notes is not None:
        notes.extend(found)
    tmp = temp_path(target, kind)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return mark(tmp)


def publish(tmp: Path, target: Path, force: bool = False, kind: OutputKind | None = None,
            origin: str | None = None) -> None:
    """Rename a completed temporary folder into place (atomically when the target is new).

    An existing target (``force``) is first moved aside as a marked ``old`` folder,
    then removed; a kill between the two renames is repaired by the next run. It is
    checked again here (an earlier output of ``kind``, or empty: the folder may have
    changed while the result was written), and a rename the system refuses (EBUSY
    for a mount point, EXDEV) is one clear error.
    """
    (tmp / MARKER).unlink(missing_ok=True)
    try:
        if target.exists() or target.is_symlink():
            if not force:
                raise LoraMergeError(f"{target} already exists; pass --force to replace it")
            if target.is_dir():
                check_replaceable(target, kind, origin)
            old = temp_path(target, "old")
            os.replace(target, old)
            if old.is_dir():
                mark(old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(tmp, target)
    except OSError as e:
        raise disk_error(e, target.parent) or LoraMergeError(
            f"cannot put the output in place at {target}: {e.strerror or e}") from e


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
                  notes: list[str] | None = None, kind: OutputKind | None = None,
                  origin: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder to write ``out`` into; rename it into place when the block ends without error.

    ``inputs`` are every path the run reads: an ``out`` that is, contains or lies
    inside one is refused before anything is touched. ``notes`` collects one line
    per leftover of a killed run that was cleaned. ``force`` replaces an existing
    ``out`` only when it is empty or an earlier output of ``kind`` (any kind
    lora_merge writes when None); ``origin`` says where ``out`` came from.
    """
    out = Path(out)
    check_output(out, force, inputs, kind=kind, origin=origin)
    with interrupt_on_signals():
        tmp = new_temp_folder(out, notes)
        try:
            yield tmp
            publish(tmp, out, force=force, kind=kind, origin=origin)
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


def replace_file(path: PathLike, content: str | bytes) -> Path:
    """Write one file in place of whatever bears its name, by staging and renaming: the one small-file writer
    for folders that already exist (a pack's skill.json and README.md, a model's card).

    The content goes into a marked temporary sibling (``.lora_merge.NAME.tmp-PID``, created exclusively and never
    through a link), is flushed to disk, then renamed over ``path`` with ``os.replace``. A rename replaces a
    symbolic link itself instead of writing where it points, so a ``README.md -> ~/.bashrc`` in a pack is
    swapped for a regular file and ``~/.bashrc`` is never opened; a reader sees the old file or the new one,
    never half of one. A folder at ``path`` is refused.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise LoraMergeError(f"{path} is a folder; cannot write a file in its place")
    tmp = temp_path(path)
    if os.path.lexists(tmp):  # a killed run's leftover under a reused process id: ours to remove (never followed)
        os.unlink(tmp)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_files(out: Path, files: dict[str, str | bytes], force: bool = False,
                inputs: Sequence[PathLike | None] = (), *, kind: OutputKind | None = None,
                origin: str | None = None) -> None:
    """A folder of small files (reports, data splits) staged like every other output."""
    with staged_output(out, force=force, inputs=inputs, kind=kind, origin=origin) as tmp:
        for name, content in files.items():
            target = tmp / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
