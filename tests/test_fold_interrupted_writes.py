"""Nothing half-written: a full disk, an overflowing dtype, SIGKILL mid-fold, and what killed runs leave behind."""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel

import lora_merge.fold.stream as stream_module
import lora_merge.io.placed as placed_module
import lora_merge.io.shards as tensors_module
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.leftovers import clean_leftovers, mark, temp_path
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("writes")
    pre = pico_model("llama")
    pre_dir = save_model(pre, root / "pre")
    pack = make_lora_pack(pre, pre_dir, root / "adapters" / "skill", "skill", seed=5)
    merged = PeftModel.from_pretrained(copy.deepcopy(pre), pack).merge_and_unload().state_dict()
    return SimpleNamespace(pre=pre, pre_dir=pre_dir, pack=pack, merged=merged)


def request(built, out: Path, **kw) -> FoldRequest:
    kw.setdefault("weights", [1.0])
    return FoldRequest(general=built.pre_dir, packs=[str(built.pack)], out=out, progress=False, **kw)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def assert_matches_peft(built, out: Path) -> None:
    ours = state_of(out)
    assert all(torch.allclose(ours[k], built.merged[k], atol=1e-5, rtol=0) for k in built.merged)


class FullDiskOs:
    """``os`` for the writers, except that writes take ``room`` bytes in all, then fail like a full disk."""

    def __init__(self, room: int):
        self.room, self.refused = room, 0

    def _take(self, n: int) -> None:
        if n > self.room:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n

    def write(self, fd, data) -> int:
        self._take(memoryview(data).nbytes)
        return os.write(fd, data)

    def pwrite(self, fd, data, offset) -> int:
        self._take(memoryview(data).nbytes)
        return os.pwrite(fd, data, offset)

    def copy_file_range(self, src, dst, count, offset_src=None, offset_dst=None) -> int:
        self._take(count)
        return os.copy_file_range(src, dst, count, offset_src, offset_dst)

    def __getattr__(self, name):
        return getattr(os, name)


@pytest.mark.parametrize("room", [100, 20_000])  # fails in the first header, or in the middle of the tensors
def test_full_disk_is_a_clear_error_and_leaves_no_partial_output(built, tmp_path, monkeypatch, room):
    full = FullDiskOs(room)
    monkeypatch.setattr(tensors_module, "os", full)
    monkeypatch.setattr(placed_module, "os", full)
    with pytest.raises(LoraMergeError, match=f"the disk is full: writing into {tmp_path}"):
        fold(request(built, tmp_path / "out"))
    # the fold did run out of room, and stopped there (each merge worker may have had one write under way)
    assert 1 <= full.refused <= stream_module.WORKERS
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_replacing_keeps_the_previous_output(built, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fold(request(built, out, weights=[0.5]))
    before = snapshot(tmp_path)
    monkeypatch.setattr(tensors_module, "os", FullDiskOs(20_000))
    monkeypatch.setattr(placed_module, "os", tensors_module.os)
    with pytest.raises(LoraMergeError, match="disk is full"):
        fold(request(built, out, force=True))
    assert snapshot(tmp_path) == before


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 kB tmpfs (needs the right to mount; skipped where there is none)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if sys.platform != "linux" or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                                 capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_fold_onto_a_real_full_disk(built, small_disk):
    (small_disk / "keep.txt").write_text("the user's file")
    with pytest.raises(LoraMergeError, match=f"the disk is full: writing into {small_disk}"):
        fold(request(built, small_disk / "out"))
    assert sorted(p.name for p in small_disk.iterdir()) == ["keep.txt"]


def test_overflow_of_the_output_dtype_names_the_tensor(built, tmp_path):
    omega = 1e9
    with pytest.raises(LoraMergeError, match="torch.float16") as err:
        fold(request(built, tmp_path / "out", weights=[omega], dtype="float16"))
    name = str(err.value).split("'")[1]
    # the oracle: PEFT's merge gives ΔW = merged − θpre; θpre + ω·ΔW must indeed pass float16's range there
    theta = built.pre.state_dict()[name]
    folded = theta + omega * (built.merged[name] - theta)
    assert folded.abs().max() > torch.finfo(torch.float16).max
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    fold(request(built, tmp_path / "out", weights=[omega], dtype="float32"))  # fits float32: no complaint


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_overflow_count_covers_the_whole_tensor_not_one_tile(built, tmp_path, monkeypatch, method):
    """The fold checks tile by tile; the message still counts every overflowing value of the tensor (ties with one
    pack at density 1 keeps the whole delta, so the same oracle holds, through the pruning rules' tiles)."""
    monkeypatch.setattr(stream_module, "TILE_ELEMENTS", 64)
    monkeypatch.setattr(stream_module, "TILE_QUANTUM", 8)
    omega = 3e8  # overflows float16 in part of each weight, so the bad values lie in several tiles
    with pytest.raises(LoraMergeError) as err:
        fold(request(built, tmp_path / "out", weights=[omega], dtype="float16", method=method, density=1.0))
    name = str(err.value).split("'")[1]
    theta = built.pre.state_dict()[name]
    folded = (theta.double() + omega * (built.merged[name].double() - theta.double())).half()
    pos, neg = int(torch.isposinf(folded).sum()), int(torch.isneginf(folded).sum())
    rows_hit = torch.isinf(folded).any(1).nonzero().flatten()
    assert rows_hit.max() - rows_hit.min() >= 8  # more than one tile of 8 rows holds some
    assert f"{pos} +Inf, {neg} -Inf" in str(err.value)


# Of the pico fold's 14 reads of touched tensors by its merge workers: they have been writing for a while, and the
# fold is seconds from its end. Only the workers' reads count: the planning's checks read the base too, before
# anything is written, and a signal then would test the start-up instead of a fold midway.
MIDWAY_READS = 4

# A pico fold is too quick to stop halfway: every tensor read of the merge workers dawdles, more so once midway, so
# that the test's signal lands while they still write even on a loaded machine. Shared by the slow children below.
SLOW_READS = textwrap.dedent("""
    import sys, threading, time
    import lora_merge.io.tensors as t
    MIDWAY_READS = int(sys.argv[5])

    plain, reads = t.SafetensorsFile.get, []
    def slow_get(self, name):
        if threading.current_thread().name == "fold-merge":
            reads.append(name)
            if len(reads) == MIDWAY_READS:  # tell the test the fold is midway (a file's size says it only late)
                open(sys.argv[4], "w").close()
            time.sleep(0.5 if len(reads) >= MIDWAY_READS else 0.2)
        return plain(self, name)
    t.SafetensorsFile.get = slow_get
""")

SLOW_FOLD = SLOW_READS + textwrap.dedent("""
    from lora_merge.fold.write import FoldRequest, fold
    fold(FoldRequest(general=sys.argv[1], packs=[sys.argv[2]], out=sys.argv[3], weights=[0.5], progress=False,
                     force=True))
""")


def midway_marker(tmp_path: Path) -> Path:
    """Where a slow folding child marks that it is midway: beside ``tmp_path``, which must end up empty."""
    return tmp_path.with_name(tmp_path.name + ".midway")


def wait_until_midway(child: subprocess.Popen, shard: Path, what: str, marker: Path) -> None:
    """Wait until the folding child is midway (its marker exists, its shard too) and still running."""
    deadline = time.monotonic() + 240  # a bound on waiting for the child to start, not a speed assertion
    while child.poll() is None and time.monotonic() < deadline and not (marker.exists() and shard.exists()):
        time.sleep(0.02)
    assert child.poll() is None, f"the folding child ended before it could be {what}"


@pytest.mark.parametrize("existing", [False, True])
def test_fold_killed_halfway_leaves_nothing_and_the_next_fold_cleans_up(built, tmp_path, existing):
    out = tmp_path / "out"
    if existing:
        fold(request(built, out, weights=[0.25]))
    before = snapshot(out) if existing else None
    marker = midway_marker(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", SLOW_FOLD, str(built.pre_dir), str(built.pack), str(out),
                              str(marker), str(MIDWAY_READS)],
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    shard = temp_path(out, "tmp", child.pid) / "model.safetensors"
    try:
        wait_until_midway(child, shard, "killed", marker)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert shard.exists()  # killed midway: a partial shard exists, hidden in the temporary folder
    leftover = shard.parent
    if existing:
        assert snapshot(out) == before  # the previous result is untouched
    else:
        assert not out.exists()
    res = fold(request(built, out, force=existing))
    assert not leftover.exists()
    assert any(temp_path(out, "tmp", child.pid).name in w and "removed" in w for w in res.warnings), res.warnings
    assert_matches_peft(built, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


SLOW_CLI_FOLD = SLOW_READS + textwrap.dedent("""
    import atexit, glob, os, signal
    from lora_merge.cli import main

    def signal_state():  # each thread's pending, blocked and ignored signals, for the test's message if it fails
        with open(sys.argv[4] + ".signals", "w") as f:
            for status in glob.glob(f"/proc/{os.getpid()}/task/*/status"):
                keys = ("Name", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
                f.write(" ".join(line.replace(chr(9), "") for line in open(status).read().splitlines()
                                 if line.split(":")[0] in keys) + chr(10))
    if os.path.isdir("/proc/self/task"):
        atexit.register(signal_state)
    # Ctrl-C reaches this child as it reaches a command typed in a terminal. A process started from a background
    # job (`cmd &` in a script, as CI runners may start the suite) inherits SIGINT ignored, and Python then leaves
    # it ignored: the fold would rightly run to its end.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main(["fold", "--general", sys.argv[1], "--adapters", sys.argv[2], "--weights", "0.5", "--out", sys.argv[3]])
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_mid_fold_stops_the_workers_and_leaves_nothing(built, tmp_path, sig):
    """SIGINT (or SIGTERM, handled alike) while the merge workers write: the CLI says so, exits 130, and no output
    or temporary folder stays."""
    out = tmp_path / "out"
    marker = midway_marker(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", SLOW_CLI_FOLD, str(built.pre_dir), str(built.pack), str(out),
                              str(marker), str(MIDWAY_READS)],
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_midway(child, temp_path(out, "tmp", child.pid) / "model.safetensors", "interrupted", marker)
        os.kill(child.pid, sig)
        _, err = child.communicate(timeout=240)
    finally:
        child.kill()
        child.wait()
    state = Path(str(marker) + ".signals")
    assert child.returncode == 130, err + (state.read_text() if state.is_file() else "")
    assert "interrupted: nothing was written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_live_processes_are_left_alone(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_tmp = temp_path(tmp_path / "out", "tmp", live.pid)
        mark(live_tmp.mkdir() or live_tmp)
        report = clean_leftovers(tmp_path, "out")
        assert live_tmp.is_dir()
        assert len(report) == 1 and "still runs" in report[0]
    finally:
        live.kill()
        live.wait()


def test_a_replace_killed_between_its_renames_is_rolled_back(tmp_path):
    pid = dead_pid()
    old = temp_path(tmp_path / "out", "old", pid)  # the previous output, moved aside; the new one never arrived
    mark(old.mkdir() or old)
    (old / "model.safetensors").write_bytes(b"previous")
    mark(temp_path(tmp_path / "out", "tmp", pid).mkdir() or temp_path(tmp_path / "out", "tmp", pid))
    report = clean_leftovers(tmp_path, "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]
    assert "restored" in report[0] and "removed" in report[1]
    # once the target exists, an .old copy is just the replaced output: removed
    mark(old.mkdir() or old)
    assert "removed" in clean_leftovers(tmp_path)[0] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_other_names_and_plain_files_are_not_touched(tmp_path):
    pid = dead_pid()
    other = temp_path(tmp_path / "other", "tmp", pid)
    mark(other.mkdir() or other)
    temp_path(tmp_path / "out", "tmp", pid).write_text("a file, not ours")
    mark(temp_path(tmp_path / "out", "tmp", f"{pid}x").mkdir() or temp_path(tmp_path / "out", "tmp", f"{pid}x"))
    (tmp_path / f".out.tmp-{pid}").mkdir()  # the name without our prefix: not ours
    unmarked = temp_path(tmp_path / "out", "old", pid)
    unmarked.mkdir()  # our name but no marker inside: not ours either
    assert clean_leftovers(tmp_path, "out") == []
    assert len(list(tmp_path.iterdir())) == 5
