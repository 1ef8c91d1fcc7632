"""`pack export` / `pack import`: a round trip that folds identically, and hostile archives that change nothing."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.leftovers import mark, temp_path
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pack.sharing import export_pack, import_pack
from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of

FILES = ["skill.json", "adapter_config.json", "adapter_model.safetensors", "base_sketch.safetensors", "README.md"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    pre = pico_model("llama")
    pre_dir = save_model(pre, root / "pre")
    pack = make_lora_pack(pre, pre_dir, root / "adapters" / "skill", "skill", seed=4)
    archive = root / "skill.tar.gz"
    res = CliRunner().invoke(main, ["pack", "export", "skill", "--adapters-dir", str(root / "adapters"),
                                    "--out", str(archive)])
    assert res.exit_code == 0, res.output
    return SimpleNamespace(root=root, pre_dir=pre_dir, pack=pack, archive=archive)


def snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {"<absent>": ""}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def pack_bytes(built) -> dict[str, bytes]:
    return {f: (built.pack / f).read_bytes() for f in FILES}


def make_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = True) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buf.getvalue()) if gz else buf.getvalue())
    return path


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def good_entries(built, top: str = "skill") -> list:
    return [regular(f"{top}/{f}", data) for f, data in pack_bytes(built).items()]


def test_export_import_round_trip_is_byte_identical_and_folds_the_same(built, tmp_path):
    reg = tmp_path / "adapters"
    res = CliRunner().invoke(main, ["pack", "import", str(built.archive), "--adapters-dir", str(reg)])
    assert res.exit_code == 0, res.output
    assert {f: (reg / "skill" / f).read_bytes() for f in FILES} == pack_bytes(built)
    assert sorted(p.name for p in reg.iterdir()) == ["skill"]  # nothing hidden left behind
    fold(FoldRequest(general=built.pre_dir, packs=["skill"], adapters_dir=reg, out=tmp_path / "a", weights=[1.0],
                     progress=False))
    fold(FoldRequest(general=built.pre_dir, packs=[str(built.pack)], out=tmp_path / "b", weights=[1.0], progress=False))
    a, b = state_of(tmp_path / "a"), state_of(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_system_tar_reads_the_export(built, tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("no tar on this machine")
    subprocess.run(["tar", "-xzf", str(built.archive), "-C", str(tmp_path)], check=True)
    assert {f: (tmp_path / "skill" / f).read_bytes() for f in FILES} == pack_bytes(built)


def test_an_archive_of_the_folder_contents_imports_under_its_manifest_name(built, tmp_path):
    archive = make_tar(tmp_path / "flat.tar", [regular(f"./{f}", d) for f, d in pack_bytes(built).items()], gz=False)
    res = import_pack(archive, tmp_path / "adapters")
    assert res.name == "skill" and (tmp_path / "adapters" / "skill" / "skill.json").is_file()


HOSTILE = {
    "parent path": lambda b: good_entries(b) + [regular("skill/../../evil.txt", b"x")],
    "dotdot at top": lambda b: [regular("../evil.txt", b"x")] + good_entries(b),
    "absolute path": lambda b: [regular("/tmp/evil-lora-merge.txt", b"x")] + good_entries(b),
    "symlink": lambda b: [special("skill/adapter_model.safetensors", tarfile.SYMTYPE, "/etc/passwd")],
    "hard link": lambda b: [special("skill/README.md", tarfile.LNKTYPE, "/etc/passwd")],
    "char device": lambda b: [special("skill/README.md", tarfile.CHRTYPE)],
    "fifo": lambda b: [special("skill/README.md", tarfile.FIFOTYPE)],
    "unexpected file": lambda b: good_entries(b) + [regular("skill/setup.py", b"import os")],
    "pickle beside the adapter": lambda b: good_entries(b) + [regular("skill/adapter_model.bin", b"\x80\x04.")],
    "sub-folder": lambda b: good_entries(b) + [regular("skill/x/README.md", b"x")],
    "two folders": lambda b: good_entries(b) + [regular("other/README.md", b"x")],
    "same file twice": lambda b: good_entries(b) + [regular("skill/README.md", b"again")],
    "no manifest": lambda b: [e for e in good_entries(b) if not e[0].name.endswith("skill.json")],
    "hash mismatch": lambda b: [e if not e[0].name.endswith(".safetensors") else
                                regular(e[0].name, e[1][:-4] + b"\0\0\0\1") for e in good_entries(b)],
    "hostile folder name": lambda b: good_entries(b, top="-rf"),
}

NEEDLES = {  # what each refusal must say
    "parent path": "outside the pack", "dotdot at top": "outside the pack", "absolute path": "absolute path",
    "symlink": "symbolic link", "hard link": "hard link", "char device": "device file", "fifo": "a fifo",
    "unexpected file": "unexpected file 'setup.py'", "pickle beside the adapter": "unexpected file 'adapter_model.bin'",
    "sub-folder": "one folder", "two folders": "outside the pack's folder", "same file twice": "appears twice",
    "no manifest": "cannot be verified", "hash mismatch": "sha256 mismatch", "hostile folder name": "not a plain pack name",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_changes_nothing(built, tmp_path, case):
    reg = tmp_path / "adapters"
    shutil.copytree(built.pack, reg / "existing")
    before = snapshot(tmp_path)
    archive = make_tar(tmp_path.parent / f"{tmp_path.name}-bad.tar.gz", HOSTILE[case](built))
    with pytest.raises(LoraMergeError, match=NEEDLES[case]):
        import_pack(archive, reg)
    assert snapshot(tmp_path) == before
    assert not Path("/tmp/evil-lora-merge.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_refused_import_into_a_missing_adapters_folder_leaves_no_folder(built, tmp_path):
    archive = make_tar(tmp_path / "bad.tar.gz", HOSTILE["symlink"](built))
    res = CliRunner().invoke(main, ["pack", "import", str(archive), "--adapters-dir", str(tmp_path / "adapters")])
    assert res.exit_code == 2 and "symbolic link" in res.output
    assert not (tmp_path / "adapters").exists()


def _zeros(n: int):
    class Zeros(io.RawIOBase):
        left = n

        def readable(self):
            return True

        def readinto(self, b):
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    return Zeros()


def test_decompression_bomb_stops_at_the_limit(built, tmp_path):
    # 64 MiB of zeros compress to ~64 kB; with a 4 MB limit the import refuses it before writing it out
    size = 64 * 2**20
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        info = tarfile.TarInfo("skill/adapter_model.safetensors")
        info.size = size
        tf.addfile(info, io.BufferedReader(_zeros(size)))
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(buf.getvalue())
    assert archive.stat().st_size < 1_000_000
    reg = tmp_path / "adapters"
    reg.mkdir()
    res = CliRunner().invoke(main, ["pack", "import", str(archive), "--adapters-dir", str(reg), "--max-size", "4MB"])
    assert res.exit_code == 2 and "import limit" in res.output
    assert list(reg.iterdir()) == []


def test_oversized_metadata_record_is_refused(built, tmp_path):
    info = tarfile.TarInfo("skill/README.md")
    info.pax_headers = {"comment": "x" * 200_000}  # tarfile would read the whole record into memory
    archive = make_tar(tmp_path / "pax.tar.gz", [(info, b"hi")] + good_entries(built))
    with pytest.raises(LoraMergeError, match="damaged or unreadable"):
        import_pack(archive, tmp_path / "adapters")


def test_compressed_archive_over_the_limit_and_non_archives_are_refused(built, tmp_path):
    with pytest.raises(LoraMergeError, match="over the import limit"):
        import_pack(built.archive, tmp_path / "adapters", max_bytes=100)
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04" + bytes(600))
    with pytest.raises(LoraMergeError, match="not a .tar.gz or .tar"):
        import_pack(tmp_path / "x.zip", tmp_path / "adapters")
    (tmp_path / "cut.tar.gz").write_bytes(built.archive.read_bytes()[:3000])
    with pytest.raises(LoraMergeError, match="damaged"):
        import_pack(tmp_path / "cut.tar.gz", tmp_path / "adapters")
    assert not (tmp_path / "adapters").exists()


def test_existing_pack_is_kept_unless_forced(built, tmp_path):
    reg = tmp_path / "adapters"
    import_pack(built.archive, reg)
    (reg / "skill" / "README.md").write_text("my notes")
    before = snapshot(reg)
    with pytest.raises(LoraMergeError, match="already exists"):
        import_pack(built.archive, reg)
    assert snapshot(reg) == before
    import_pack(built.archive, reg, force=True)
    assert (reg / "skill" / "README.md").read_bytes() == (built.pack / "README.md").read_bytes()
    res = import_pack(built.archive, reg, name="skill-copy")
    assert res.path == reg / "skill-copy" and sorted(p.name for p in reg.iterdir()) == ["skill", "skill-copy"]


def test_export_refuses_a_broken_pack_and_an_existing_archive(built, tmp_path):
    reg = tmp_path / "adapters"
    shutil.copytree(built.pack, reg / "skill")
    with pytest.raises(LoraMergeError, match="already exists"):
        export_pack("skill", built.archive, reg)
    weights = reg / "skill" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x7f")
    res = CliRunner().invoke(main, ["pack", "export", "skill", "--adapters-dir", str(reg), "--out",
                                    str(tmp_path / "x.tar.gz")])
    assert res.exit_code == 2 and "fails verification" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters"]


def test_import_cleans_what_a_killed_import_left(built, tmp_path):
    reg = tmp_path / "adapters"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id that no longer runs
    left = temp_path(reg / "import", "tmp", child.pid)
    left.mkdir(parents=True)
    mark(left)
    (left / "skill.json").write_text("{}")
    res = import_pack(built.archive, reg)
    assert sorted(p.name for p in reg.iterdir()) == ["skill"]
    assert len(res.notes) == 1 and left.name in res.notes[0] and "removed" in res.notes[0]
