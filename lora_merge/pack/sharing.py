"""Sharing skill packs: verify a pack, export it as a .tar.gz, import one safely.

A pack someone sends is untrusted input. :func:`import_pack` never lets
``tarfile`` extract anything: it reads the archive as a stream, accepts only
regular files with the few names a pack has (no absolute paths, no ``..``, no
links, devices or fifos), counts every decompressed byte against a limit (a
decompression bomb stops at the limit, not at a full disk), writes into a
hidden, marked ``.lora_merge.import.tmp-PID`` folder (:mod:`lora_merge.core.output`), verifies the manifest, the sha256 of every
weight file, the safetensors headers and that every value is finite, and only
then renames the folder into place. A refused import leaves the adapters
folder exactly as it was.
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.leftovers import clean_leftovers, disk_error
from lora_merge.core.names import check_name, is_plain_name
from lora_merge.core.output import discard, new_temp_folder, publish, staged_file
from lora_merge.io.numerics import scan_file
from lora_merge.io.shards import parse_size
from lora_merge.io.tensors import PICKLE_SUFFIXES, read_header
from lora_merge.pack.files import MAX_JSON_BYTES, check_pack_file, open_pack_file
from lora_merge.pack.skillpack import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BASE_SKETCH,
    DENSE_WEIGHTS,
    MANIFEST_NAME,
    load_manifest,
    load_pack,
    resolve_pack,
)

# The only files a shared pack holds.
PACK_FILES = (MANIFEST_NAME, ADAPTER_CONFIG, ADAPTER_WEIGHTS, DENSE_WEIGHTS, BASE_SKETCH, "README.md")
DEFAULT_MAX_IMPORT = "20GiB"
MAX_MEMBERS = 16  # the pack files, their folder and a little slack
MAX_METADATA_RECORD = 64 * 1024  # pax / GNU long-name records are read into memory: keep them small
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackCheck:
    """One line of `pack verify`: what was checked, whether it holds, and the detail."""

    what: str
    ok: bool
    detail: str


def check_pack(path: str | os.PathLike) -> list[PackCheck]:
    """Everything that must hold for a pack to be folded or shared, each as a :class:`PackCheck`."""
    path = Path(path)
    checks: list[PackCheck] = []
    manifest_file = path / MANIFEST_NAME
    if os.path.lexists(manifest_file):  # a link or a fifo is refused by load_manifest, not taken for absent
        try:
            load_manifest(manifest_file)
            checks.append(PackCheck("manifest", True, f"{MANIFEST_NAME} is valid"))
        except LoraMergeError as e:
            return checks + [PackCheck("manifest", False, str(e))]
    else:
        checks.append(PackCheck("manifest", False, f"no {MANIFEST_NAME}: nothing to verify the weights against"))
    try:
        pack = load_pack(path, verify=False)
    except LoraMergeError as e:
        return checks + [PackCheck("layout", False, str(e))]
    checks.append(PackCheck("layout", True, f"{pack.kind} pack"))
    if os.path.lexists(path / "README.md"):
        try:
            check_pack_file(path / "README.md", path)
        except LoraMergeError as e:
            checks.append(PackCheck("file README.md", False, str(e)))
    for fname, ok, detail in pack.verify():
        checks.append(PackCheck(f"sha256 {fname}", ok, detail))
    for fname in (ADAPTER_WEIGHTS, DENSE_WEIGHTS, BASE_SKETCH):
        if not (path / fname).is_file():
            continue
        try:
            infos, _ = read_header(path / fname)
        except LoraMergeError as e:
            checks.append(PackCheck(f"header {fname}", False, str(e)))
            continue
        checks.append(PackCheck(f"header {fname}", True, f"{len(infos)} tensors, offsets within the file"))
        bad = list(scan_file(path / fname, pack.name))
        detail = "; ".join(f"{k}: {what}" for k, what in bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        checks.append(PackCheck(f"values {fname}", not bad, detail or "every value is finite"))
    for extra in sorted(p.name for p in path.iterdir() if p.name not in PACK_FILES):
        pickled = Path(extra).suffix in PICKLE_SUFFIXES
        checks.append(PackCheck(f"extra {extra}", True,
                                f"{'a pickle, never loaded' if pickled else 'not part of the pack'}; export leaves it out"))
    return checks


def require_verified(path: Path, what: str) -> list[PackCheck]:
    checks = check_pack(path)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise LoraMergeError(f"{what}: the pack fails verification: " + "; ".join(f"{c.what}: {c.detail}" for c in failed))
    return checks


# --- export ---------------------------------------------------------------

@dataclass(frozen=True)
class Exported:
    archive: Path
    name: str
    files: list[str]
    bytes: int


def export_pack(name_or_path: str, out: str | os.PathLike, adapters_dir: str | os.PathLike = "adapters",
                force: bool = False) -> Exported:
    """Write a verified pack as ``out`` (.tar.gz holding ``NAME/<pack files>``), atomically."""
    path = resolve_pack(name_or_path, adapters_dir)
    require_verified(path, str(path))
    name = path.resolve().name
    check_name(name, f"{path}: the folder name (rename the folder first)")
    out = Path(out)
    if out.is_dir():
        raise LoraMergeError(f"{out} is a folder; give the archive's file name, e.g. --out {name}.tar.gz")
    files = [f for f in PACK_FILES if os.path.lexists(path / f)]  # each checked by open_pack_file below
    try:
        with staged_file(out, force=force, inputs=[path]) as tmp, open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            tf.addfile(_entry(name, tarfile.DIRTYPE, 0, 0o755, int((path / MANIFEST_NAME).stat().st_mtime)))
            for f in files:
                with open_pack_file(path / f, path) as src:
                    st = os.fstat(src.fileno())
                    tf.addfile(_entry(f"{name}/{f}", tarfile.REGTYPE, st.st_size, 0o644, int(st.st_mtime)), src)
            tf.close()
            gz.close()
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException as e:
        explained = disk_error(e, out.parent) if isinstance(e, OSError) else None
        if explained:
            raise explained from e
        raise
    return Exported(out, name, files, out.stat().st_size)


def _entry(name: str, kind: bytes, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# --- import ---------------------------------------------------------------

@dataclass
class Imported:
    path: Path
    name: str
    files: list[str]
    bytes: int
    notes: list[str] = field(default_factory=list)


class _TooBig(Exception):
    pass


class _Limited:
    """A read-only stream that stops once more than ``limit`` bytes came out of it (a decompression bomb)."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.count = inner, limit, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.limit + 1 - self.count  # never an unbounded read
        data = self.inner.read(min(n, self.limit + 1 - self.count) if n else 0)
        self.count += len(data)
        if self.count > self.limit:
            raise _TooBig()
        return data


class _StrictTarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name records, which tarfile would otherwise read whole into memory."""

    def _proc_member(self, tf):  # tarfile's hook for every header it reads
        meta = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                tarfile.GNUTYPE_LONGLINK)
        if self.type in meta and self.size > MAX_METADATA_RECORD:
            raise tarfile.HeaderError(f"a {self.size}-byte metadata record")
        return super()._proc_member(tf)


def import_pack(archive: str | os.PathLike, adapters_dir: str | os.PathLike = "adapters", name: str | None = None,
                force: bool = False, max_bytes: int | str = DEFAULT_MAX_IMPORT) -> Imported:
    """Unpack a shared pack archive into ``adapters_dir/NAME`` after verifying all of it; atomic."""
    archive, adapters_dir, limit = Path(archive), Path(adapters_dir), parse_size(max_bytes)
    if not archive.is_file():
        raise LoraMergeError(f"{archive}: no such archive file")
    if archive.stat().st_size > limit:
        raise LoraMergeError(f"{archive}: {archive.stat().st_size} bytes is over the import limit of {limit} bytes; "
                             "pass --max-size to allow a bigger pack")
    if name is not None:
        check_name(name, "--name")
        _refuse_existing(adapters_dir / name, force)
    created = not adapters_dir.exists()
    adapters_dir.mkdir(parents=True, exist_ok=True)
    notes = clean_leftovers(adapters_dir)  # only folders lora_merge marked as its own
    tmp = new_temp_folder(adapters_dir / "import")
    try:
        top, files, size = _unpack(archive, tmp, limit)
        require_verified(tmp, f"{archive}")
        notes.extend(load_pack(tmp, verify=False).warnings)  # e.g. a format-1 manifest that leaves the config out
        final = name or top or load_manifest(tmp / MANIFEST_NAME).name
        check_name(final, "the pack name (pass --name)")
        target = adapters_dir / final
        _refuse_existing(target, force)
        publish(tmp, target, force=force)
    except BaseException as e:
        discard(tmp)
        if created and not any(adapters_dir.iterdir()):
            adapters_dir.rmdir()  # we made it; a refused import leaves no trace
        explained = disk_error(e, adapters_dir) if isinstance(e, OSError) else None
        if explained:
            raise explained from e
        raise
    return Imported(target, final, files, size, notes)


def _refuse_existing(target: Path, force: bool) -> None:
    if (target.exists() or target.is_symlink()) and not force:
        raise LoraMergeError(f"{target} already exists; pass --force to replace it, or --name to import it as another pack")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise LoraMergeError(f"{target} exists and is not a pack folder; move it away first")


def _open_stream(raw):
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    raw.seek(257)
    ustar = raw.read(5)
    raw.seek(0)
    if ustar == b"ustar":
        return raw
    raise LoraMergeError("not a .tar.gz or .tar archive (make one with `cli.py pack export`)")


def _unpack(archive: Path, dest: Path, limit: int) -> tuple[str | None, list[str], int]:
    """Stream the archive's pack files into ``dest``; return (top folder or None, files, bytes)."""
    top: str | None = None
    files: list[str] = []
    total = 0
    try:
        with open(archive, "rb") as raw:
            stream = _Limited(_open_stream(raw), limit + MAX_MEMBERS * 3 * 512 + 10240)
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictTarInfo) as tf:
                for i, member in enumerate(tf):
                    if i >= MAX_MEMBERS:
                        raise LoraMergeError(f"{archive}: more than {MAX_MEMBERS} entries; a pack has at most {len(PACK_FILES)} files")
                    folder, fname = _member_path(archive, member)
                    if top is not None and folder != top or (files and top is None and folder is not None):
                        raise LoraMergeError(f"{archive}: entry {member.name!r} is outside the pack's folder {top!r}")
                    top = folder
                    if member.isdir():
                        if fname is not None:
                            raise LoraMergeError(f"{archive}: unexpected folder {member.name!r}; a pack has no sub-folders")
                        continue
                    if fname not in (ADAPTER_WEIGHTS, DENSE_WEIGHTS) and member.size > MAX_JSON_BYTES:
                        raise LoraMergeError(f"{archive}: {fname} is {member.size} bytes; a pack's {fname} is at most "
                                             f"{MAX_JSON_BYTES} bytes")
                    if total + member.size > limit:
                        raise LoraMergeError(f"{archive}: unpacks to more than the import limit of {limit} bytes "
                                             "(a decompression bomb, or a pack bigger than --max-size allows)")
                    total += _write_member(archive, tf, member, dest / fname)
                    files.append(fname)
    except _TooBig:
        raise LoraMergeError(f"{archive}: unpacks to more than the import limit of {limit} bytes (a decompression "
                             "bomb, or a pack bigger than --max-size allows)") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise LoraMergeError(f"{archive}: damaged or unreadable archive ({e or type(e).__name__})") from None
    if not files:
        raise LoraMergeError(f"{archive}: holds no pack files")
    if MANIFEST_NAME not in files:
        raise LoraMergeError(f"{archive}: has no {MANIFEST_NAME}, so its weights cannot be verified; refusing it")
    return top, files, total


def _member_path(archive: Path, member: tarfile.TarInfo) -> tuple[str | None, str | None]:
    """(top folder or None, file name or None for the folder itself); refuses everything a pack cannot hold."""
    name = member.name
    bad = f"{archive}: refusing entry {name!r}"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a device file",
                tarfile.BLKTYPE: "a device file", tarfile.FIFOTYPE: "a fifo"}.get(member.type, "not a regular file")
        raise LoraMergeError(f"{bad}: {kind}; a pack holds only regular files")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise LoraMergeError(f"{bad}: an absolute path; a pack's entries are relative")
    if any(ord(c) < 32 for c in name):
        raise LoraMergeError(f"{bad}: control characters in the name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LoraMergeError(f"{bad}: it points outside the pack ('..')")
    if member.isdir():
        if len(parts) > 1:
            raise LoraMergeError(f"{bad}: a pack has no sub-folders")
        return (parts[0] if parts else None), None
    if len(parts) not in (1, 2):
        raise LoraMergeError(f"{bad}: a pack's files lie in one folder")
    folder, fname = (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if folder is not None and not is_plain_name(folder):
        raise LoraMergeError(f"{bad}: the folder name is not a plain pack name")
    if fname not in PACK_FILES:
        raise LoraMergeError(f"{bad}: unexpected file {fname!r}; a pack holds only {', '.join(PACK_FILES)}")
    return folder, fname


def _write_member(archive: Path, tf: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> int:
    src = tf.extractfile(member)
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise LoraMergeError(f"{archive}: {dest.name} appears twice") from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(min(_CHUNK, member.size - written)) if written < member.size else b"":
            out.write(chunk)
            written += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if written != member.size:
        raise LoraMergeError(f"{archive}: {dest.name} is truncated ({written} of {member.size} bytes)")
    return written
