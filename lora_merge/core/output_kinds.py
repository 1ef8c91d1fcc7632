"""What each writer's output holds, so that ``--force`` replaces only an earlier output of the same kind.

``--force`` once replaced whatever folder ``--out`` named: ``fold --out ~/projects --force`` deleted a user's
projects, and a recipe's ``out:`` hid which folder it was. Now every writer names the :class:`OutputKind` it
writes, and an existing folder is replaced only when

- it is empty, or
- it holds every file that kind always writes (its ``marks``: the records lora_merge puts beside each result, a
  merged model's ``lora_merge.json`` and ``lora_merge_recipe.yml``, a pack's ``skill.json``, an eval report's
  ``scores.json`` and ``samples.jsonl`` …) and no sub-folder that kind never writes;

and never when it is, or holds, the working directory. A user's folder is told apart by what it lacks; a folder
someone filled with copies of lora_merge's records is taken for an output, which is as far as a check of the
contents can go. The refusal says where the folder came from (``--out``, a recipe's ``out:``) and what it holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lora_merge.core.errors import LoraMergeError

SHOWN = 5  # entries of a refused folder named in the message


@dataclass(frozen=True)
class OutputKind:
    """One kind of output folder: its name in messages, the files it always holds, the sub-folders it may hold."""

    name: str
    marks: tuple[str, ...]
    folders: tuple[str, ...] = ()

    def describe(self) -> str:
        """``a skill pack (which would hold skill.json)``: how a refusal names what ``--force`` may replace."""
        return f"{_article(self.name)} {self.name} (which would hold {', '.join(self.marks)})"


# The marks are the file names the writers use (tests/test_core_output_kinds.py holds them to the constants).
MERGED_MODEL = OutputKind("merged model", ("lora_merge.json", "lora_merge_recipe.yml"))
TRAINED_MODEL = OutputKind("trained model", ("lora_merge.json", "config.json"), folders=("adapter",))
PACK = OutputKind("skill pack", ("skill.json",))
EVAL_REPORT = OutputKind("eval report", ("scores.json", "samples.jsonl"))
SWEEP = OutputKind("sweep result", ("results.json", "results.csv"))
SKILL_DATA = OutputKind("skill data folder", ("report.json", "train.jsonl"))
PRETRAINED = OutputKind("miniature θpre", ("pretrain.json", "config.json"))
PREPARED = OutputKind("prepared θpre", ("prepared_from.json", "config.json"))
KINDS = (MERGED_MODEL, TRAINED_MODEL, PACK, EVAL_REPORT, SWEEP, SKILL_DATA, PRETRAINED, PREPARED)


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeio" else "a"


def holds_cwd(out: Path) -> bool:
    """Whether ``out`` is the working directory or one of the folders above it (links resolved)."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory was removed: nothing of it to protect
        return False
    o = out.resolve()
    return o == cwd or o in cwd.parents


def cwd_refusal(out: Path, origin: str | None = None) -> str | None:
    """Why ``out`` may not be written at all because it is or holds the working directory (None when it may not)."""
    if not holds_cwd(out):
        return None
    relation = "is" if out.resolve() == Path.cwd().resolve() else "holds"
    return (f"output {_where(out, origin)} {relation} the working directory {Path.cwd()}; writing there would "
            "replace it. Choose an --out elsewhere")


def _where(out: Path, origin: str | None) -> str:
    return f"{out} (from {origin})" if origin else str(out)


def _entries(out: Path) -> tuple[set[str], set[str]]:
    """The names of the files and of the sub-folders in ``out`` (a link counts as what it is, not followed)."""
    files, folders = set(), set()
    with os.scandir(out) as it:
        for e in it:
            (folders if e.is_dir(follow_symlinks=False) else files).add(e.name)
    return files, folders


def _shown(files: set[str], folders: set[str]) -> str:
    names = sorted(f"{d}/" for d in folders) + sorted(files)
    more = f", … ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {', '.join(names[:SHOWN])}{more}"


def _fits(kind: OutputKind, files: set[str], folders: set[str]) -> bool:
    return set(kind.marks) <= files and folders <= set(kind.folders)


def replace_refusal(out: Path, kind: OutputKind | None, origin: str | None = None) -> str | None:
    """Why ``--force`` may not replace the existing folder ``out`` (None when it may).

    ``kind`` None (a library caller that names none) accepts an earlier output of any kind lora_merge writes.
    """
    cwd = cwd_refusal(out, origin)
    if cwd is not None:
        return cwd
    if out.is_symlink() and not out.exists():
        return None  # a dangling link: replacing it deletes nothing but the link
    try:
        files, folders = _entries(out)
    except OSError as e:
        return f"output {_where(out, origin)} cannot be listed ({e.strerror}); choose another --out"
    if not files and not folders:
        return None
    kinds = KINDS if kind is None else (kind,)
    if any(_fits(k, files, folders) for k in kinds):
        return None
    what = "an output lora_merge wrote" if kind is None else kind.describe()
    extra = ""
    if kind is not None and set(kind.marks) <= files:
        extra = f", but also the sub-folder(s) {', '.join(sorted(folders - set(kind.folders)))} that one never holds"
    return (f"refusing to replace {_where(out, origin)}: it holds {_shown(files, folders)}{extra}; it is not "
            f"{what}, and --force replaces only an earlier output of the same kind or an empty folder. Choose "
            "another --out, or move that folder away yourself")


def check_replaceable(out: Path, kind: OutputKind | None, origin: str | None = None) -> None:
    """Raise the :func:`replace_refusal` of ``out``, if any."""
    reason = replace_refusal(out, kind, origin)
    if reason is not None:
        raise LoraMergeError(reason)
