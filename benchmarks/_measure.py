"""One measured subprocess: wall time, peak RSS and anonymous RSS (polled), bytes read and written."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GB = 1e9


@dataclass
class Row:
    label: str
    size: str
    wall_s: float = 0.0
    work_s: float | None = None  # the job's own time, after interpreter start and imports
    peak_rss: int = 0
    peak_anon: int = 0
    read: int = 0
    written: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)  # every timed run's seconds, in the order they ran

    @property
    def seconds(self) -> float:
        return self.work_s if self.work_s is not None else self.wall_s


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _io(pid: int) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def measure(label: str, size: str, cmd: list[str], log: Path) -> Row:
    """Run ``cmd`` alone; peak RSS (VmHWM) and anonymous RSS polled, I/O read from the zombie before reaping."""
    row = Row(label, size)
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                row.peak_anon = max(row.peak_anon, _status_kb(proc.pid, "RssAnon"))
                row.peak_rss = max(row.peak_rss, _status_kb(proc.pid, "VmHWM"))
                time.sleep(0.01)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: /proc/pid/io still there
        row.wall_s = time.perf_counter() - t0
        done.set()
        watcher.join()
        io = _io(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss would report this (torch-sized) parent's RSS for a small child: the child's forked copy of our
    # memory counts until exec. VmHWM, the child's own high-water mark, is polled instead.
    del usage
    row.read, row.written = io.get("rchar", 0), io.get("wchar", 0)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        row.error = f"exit {proc.returncode}: " + " | ".join(text.strip().splitlines()[-3:])[-400:]
    for line in reversed(text.splitlines()):
        if line.startswith('{"work_s"'):
            row.work_s = json.loads(line)["work_s"]
            break
    return row


