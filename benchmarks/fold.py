"""The fold side by side with its peers and the I/O floor: `make bench` (add `--large` for the 7B model).

Builds (once, cached under benchmarks/.cache/) synthetic Llama-shaped bf16 models with
rank-16 LoRA packs on every linear layer (benchmarks/_models.py), then measures, each in
its own subprocess, with the page cache warm: `cp -r` of θG (with and without `sync`),
our fold with 1, 3 and 8 packs, every B·A alone, PEFT's load + scale + merge_and_unload +
save_pretrained, and mergekit's task_arithmetic recipe (θpre base, θG at 1, θpre+LoRA at ω)
in its own venv. For each: wall time, peak RSS, peak anonymous RSS, bytes read and written.
The outputs are checked against the bf16 of the float32 result. A table is printed and
written into docs/benchmarks.md (between markers, so other sections of that file stay).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import _models  # noqa: E402

OMEGA = 0.3
PY = sys.executable
WORK = _models.CACHE / "runs"
MERGEKIT_VENV = _models.CACHE / "mergekit-venv"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- fold-bench:start -->", "<!-- fold-bench:end -->"
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


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def settle(*drop: Path) -> None:
    """Remove outputs no longer needed and flush dirty pages, so one run's writeback does not bill the next."""
    for d in drop:
        shutil.rmtree(d, ignore_errors=True)
    subprocess.run(["sync"], check=False)


def warm(folder: Path) -> None:
    for f in sorted(folder.iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Bench:
    def __init__(self, log):
        self.rows: list[Row] = []
        self.log = log
        WORK.mkdir(parents=True, exist_ok=True)

    def run(self, label: str, size: str, cmd: list[str]) -> Row:
        row = measure(label, size, cmd, WORK / f"{size}-{label.replace(' ', '_').replace('/', '_')}.log")
        row.notes.append(f"load {load_avg()}")
        self.rows.append(row)
        self.log(f"  {size:5} {label:34} {row.seconds:7.2f} s  wall {row.wall_s:7.2f} s  "
                 f"peak RSS {row.peak_rss / GB:5.2f} GB  anon {row.peak_anon / GB:5.2f} GB"
                 + (f"  ERROR {row.error}" if row.error else ""))
        return row

    def floor(self, size: str, general: Path) -> tuple[Row, Row]:
        warm(general)
        dst = fresh(WORK / f"{size}-cp")
        settle()
        cp = self.run("cp -r", size, ["cp", "-r", str(general), str(dst)])
        sync = self.run("sync (after cp -r)", size, ["sync"])
        settle(dst)
        return cp, sync

    def fold(self, size: str, general: Path, packs: list[Path], fsync: bool, keep: bool = False,
             device: str = "cpu") -> Row:
        warm(general)
        out = fresh(WORK / f"{size}-fold{len(packs)}{'' if fsync else '-nofsync'}")
        label = f"fold, {len(packs)} pack{'s' if len(packs) > 1 else ''}" + ("" if fsync else ", no fsync") \
            + (f", {device}" if device != "cpu" else "")
        cmd = [PY, str(HERE / "_jobs.py"), "fold", str(general), str(out), str(OMEGA), *map(str, packs)]
        cmd += ([] if fsync else ["--no-fsync"]) + ([f"--device={device}"] if device != "cpu" else [])
        row = self.run(label, size, cmd)
        if not keep:
            settle(out)
        return row


def mergekit_ready(log) -> str | None:
    """Install mergekit in its own venv (CPU torch first); return an error text when it cannot be."""
    exe = MERGEKIT_VENV / "bin" / "mergekit-yaml"
    if exe.exists():
        return None
    log("installing mergekit into benchmarks/.cache/mergekit-venv (once) …")
    steps = [["python3", "-m", "venv", str(MERGEKIT_VENV)],
             [str(MERGEKIT_VENV / "bin" / "pip"), "install", "-q", "torch==2.13.0"],
             [str(MERGEKIT_VENV / "bin" / "pip"), "install", "-q", "mergekit"]]
    for step in steps:
        r = subprocess.run(step, capture_output=True, text=True)
        if r.returncode != 0:
            return f"`{' '.join(step[-3:])}` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return None


def run_mergekit(bench: Bench, built: _models.Built, out: Path) -> Row:
    err = mergekit_ready(bench.log)
    if err:
        row = Row("mergekit task_arithmetic", built.shape.name, error=err)
        bench.rows.append(row)
        return row
    cfg = WORK / "mergekit.yml"
    cfg.write_text(
        "merge_method: task_arithmetic\n"
        f"base_model: {built.base}\n"
        "models:\n"
        f"  - model: {built.general}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {built.base}+{built.packs[0]}\n    parameters: {{weight: {OMEGA}}}\n"
        "dtype: float32\nout_dtype: bfloat16\n"
    )
    cache = fresh(WORK / "mergekit-lora-cache")
    warm(built.general)
    warm(built.base)
    row = bench.run("mergekit task_arithmetic", built.shape.name,
                    [str(MERGEKIT_VENV / "bin" / "mergekit-yaml"), str(cfg), str(out), "--lora-merge-cache", str(cache),
                     "--no-copy-tokenizer", "--no-write-model-card", "--quiet"])
    settle(cache)
    return row


# --- agreement ------------------------------------------------------------------------------------------

def _ordered(t):
    import torch

    i = t.view(torch.int16).to(torch.int32)
    return torch.where(i < 0, -(i & 0x7FFF), i)


def agreement(built: _models.Built, outputs: dict[str, Path]) -> dict[str, dict]:
    """Each output against bf16(θG.float() + ω·(α/r)·B@A) and the fold against PEFT: max ulp, % identical."""

    import torch

    from lora_merge.tensors import SafetensorsFile, WeightSet

    torch.set_num_threads(1)  # small ops under torch's thread pool crawl when other jobs share the cores
    general = WeightSet.open(built.general)
    sets = {k: WeightSet.open(v) for k, v in outputs.items()}
    lora = SafetensorsFile(built.packs[0] / "adapter_model.safetensors")
    cfg = json.loads((built.packs[0] / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    pairs = [(k, "exact") for k in outputs] + ([("fold", "PEFT")] if {"fold", "PEFT"} <= outputs.keys() else [])
    stats = {f"{a} vs {b}": {"n": 0, "same": 0, "max_ulp": 0, "missing": 0, "far": 0, "far_max_abs": 0.0}
             for a, b in pairs}
    for name in general.keys():
        theta = general.get(name)
        key = "base_model.model." + name.removesuffix(".weight") + ".lora_A.weight"
        if key in lora.tensors:
            a, b = lora.get(key).float(), lora.get(key.replace("lora_A", "lora_B")).float()
            exact = (theta.float() + (b * scale * OMEGA) @ a).to(theta.dtype)
        else:
            exact = theta
        got = {"exact": exact}
        for k, ws in sets.items():
            got[k] = ws.get(name).to(theta.dtype) if name in ws else None
        for a_name, b_name in pairs:
            s = stats[f"{a_name} vs {b_name}"]
            x, y = got[a_name], got[b_name]
            if x is None or y is None:
                s["missing"] += 1
                continue
            if torch.equal(x, y):
                s["n"] += x.numel()
                s["same"] += x.numel()
                continue
            d = (_ordered(x) - _ordered(y)).abs_()
            far = d > 1  # more than one ulp apart: how large are those values?
            if far.any():
                s["far"] += int(far.sum())
                s["far_max_abs"] = max(s["far_max_abs"], float(x[far].float().abs().max()))
            s["n"] += d.numel()
            s["same"] += int((d == 0).sum())
            s["max_ulp"] = max(s["max_ulp"], int(d.max()) if d.numel() else 0)
    return stats


# --- report ------------------------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    mem = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), platform.processor())
    du = shutil.disk_usage(_models.CACHE)
    dev = subprocess.run(["df", "--output=source,fstype", str(_models.CACHE)], capture_output=True, text=True).stdout
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": f"{os.cpu_count()} cores, {cpu}",
            "ram": f"{mem / 2**20:.1f} GiB", "disk": f"{' '.join(dev.split()[-2:])}, {du.total / 2**30:.0f} GiB "
            f"({du.free / 2**30:.0f} GiB free)", "python": platform.python_version()}


def render(rows: list[Row], stats: dict, info: dict, checks: list[str], loads: tuple[str, str]) -> str:
    cp = {r.size: r for r in rows if r.label == "cp -r"}
    sync = {r.size: r for r in rows if r.label.startswith("sync")}
    lines = [
        START,
        "## Fold speed and memory (`make bench`)",
        "",
        "Reproduce with `make bench` (`make bench BENCH_ARGS=--large` adds the 7B model, ~45 GB of disk); "
        "the models and packs are built once into benchmarks/.cache/.",
        "",
        f"Measured {info['date']} on {info['cpu']}; {info['ram']} RAM; disk {info['disk']}; Python {info['python']}.",
        f"Load average (1/5/15 min) at start {loads[0]}, at end {loads[1]} — on this shared 2-core machine other "
        "jobs ran beside the benchmark, so absolute times are noisy; ratios within one run are what to compare.",
        "",
        f"Synthetic Llama-shaped bf16 models (random weights), rank-16 LoRA on every linear layer, ω = {OMEGA}, page "
        "cache warm. *time* is the job's own time after interpreter start and imports (the process's wall time is "
        "beside it); for `cp`/`sync`/mergekit it is the wall time. *× floor* divides by `cp -r` of the same size, or "
        "by `cp -r` + `sync` for the rows that fsync. Peak RSS counts the memory-mapped model pages a process "
        "touched; *anon* is its own (heap) memory, polled every 10 ms. Read/written are the bytes passed through "
        "read()/write() (memory-mapped reads and kernel-side copies do not show).",
        "",
        "| size | job | time s | wall s | × floor | peak RSS GB | anon GB | read GB | written GB | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        floor = cp.get(r.size)
        if floor and "no fsync" not in r.label and r.label.startswith("fold") and r.size in sync:
            ratio = r.seconds / (floor.wall_s + sync[r.size].wall_s)
        elif floor and r.label != "cp -r" and not r.label.startswith("sync"):
            ratio = r.seconds / floor.wall_s
        else:
            ratio = None
        if r.error:
            lines.append(f"| {r.size} | {r.label} | — | — | — | — | — | — | — | not measured: {r.error} |")
            continue
        lines.append(
            f"| {r.size} | {r.label} | {r.seconds:.2f} | {r.wall_s:.2f} | {'' if ratio is None else f'{ratio:.2f}'} | "
            f"{r.peak_rss / GB:.2f} | {r.peak_anon / GB:.2f} | {r.read / GB:.2f} | {r.written / GB:.2f} | "
            f"{'; '.join(r.notes)} |")
    if stats:
        lines += ["", "Agreement on the 1.1B model (bf16 bit patterns; *exact* = bf16 of the float32 result "
                  "θG + ω·(α/r)·B·A; ulps are counted in the bf16 bit pattern, so where θG + Δ cancels to "
                  "near zero a tiny absolute difference is many ulps: the last column says how large the values "
                  "more than 1 ulp apart are):", "",
                  "| comparison | elements | bit-identical | max ulp | > 1 ulp apart |", "|---|---:|---:|---:|---|"]
        for k, s in stats.items():
            pct = 100 * s["same"] / s["n"] if s["n"] else 0.0
            missing = f" ({s['missing']} tensors missing)" if s["missing"] else ""
            far = f"{s['far']:,} elements, all \\|x\\| ≤ {s['far_max_abs']:.2g}" if s["far"] else "none"
            lines.append(f"| {k} | {s['n']:,} | {pct:.5f} % | {s['max_ulp']}{missing} | {far} |")
    lines += ["", "Targets (issue 7):", ""] + [f"- {c}" for c in checks] + ["", END]
    return "\n".join(lines) + "\n"


def write_doc(text: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    old = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    if START in old and END in old:
        new = old[: old.index(START)] + text + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    DOC.write_text(new)


def targets(rows: list[Row], stats: dict, shapes: dict) -> list[str]:
    def get(size: str, label: str) -> Row | None:
        return next((r for r in rows if r.size == size and r.label == label and not r.error), None)

    out = []
    cp, sync = get("1.1B", "cp -r"), get("1.1B", "sync (after cp -r)")
    f1, f1n, f3 = get("1.1B", "fold, 1 pack"), get("1.1B", "fold, 1 pack, no fsync"), get("1.1B", "fold, 3 packs, no fsync")
    peft, mk = get("1.1B", "PEFT load+scale+merge+save"), get("1.1B", "mergekit task_arithmetic")
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    if cp and f1n:
        out.append(f"1.1B, one pack ≤ 2.5× `cp -r`: {f1n.seconds / cp.wall_s:.2f}× without fsync — {ok(f1n.seconds <= 2.5 * cp.wall_s)}"
                   + (f"; durable (fsync) {f1.seconds / (cp.wall_s + sync.wall_s):.2f}× `cp -r` + `sync`" if f1 and sync else ""))
    if f1n and peft:
        out.append(f"faster than PEFT: {peft.seconds / f1n.seconds:.1f}× (target ≥ 8×)"
                   + (f"; than mergekit: {mk.seconds / f1n.seconds:.1f}× (target ≥ 15×)" if mk else ""))
    for size, shape in shapes.items():
        r = get(size, "fold, 1 pack, no fsync") or get(size, "fold, 1 pack")
        if r:
            limit = 1e9 + 2 * 4 * shape.largest()
            out.append(f"{size}: anonymous peak {r.peak_anon / GB:.2f} GB ≤ 1 GB + 2 × largest tensor in fp32 "
                       f"({limit / GB:.2f} GB) — {ok(r.peak_anon <= limit)}; peak RSS {r.peak_rss / GB:.2f} GB")
    if f1n and f3:
        out.append(f"three packs ÷ one pack: {f3.seconds / f1n.seconds:.2f} (target ≤ 1.3) — {ok(f3.seconds <= 1.3 * f1n.seconds)}")
    s = stats.get("fold vs PEFT")
    if s and s["n"]:
        pct = 100 * s["same"] / s["n"]
        out.append(f"fold vs PEFT: {pct:.5f} % bit-identical (target ≥ 99.99 %) — {ok(pct >= 99.99)}; max "
                   f"{s['max_ulp']} ulp (target ≤ 1) — {ok(s['max_ulp'] <= 1)}"
                   + (f": {s['far']} elements more than 1 ulp apart, all of magnitude ≤ {s['far_max_abs']:.2g} where "
                      "θG + Δ nearly cancels and PEFT's (B·A)·s and our (B·s)·A differ in float32 rounding"
                      if s["far"] else ""))
    e = stats.get("fold vs exact")
    if e and e["n"]:
        out.append(f"fold vs exact: {100 * e['same'] / e['n']:.4f} % bit-identical, max {e['max_ulp']} ulp")
    big = get("7B", "fold, 1 pack")
    cp7 = get("7B", "cp -r")
    if big and cp7:
        out.append(f"7B: fold {big.seconds:.0f} s = {big.seconds / cp7.wall_s:.2f}× `cp -r`, peak RSS "
                   f"{big.peak_rss / GB:.2f} GB (target < 3 GB) — {ok(big.peak_rss < 3e9)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", action="store_true", help="also the 7B model (~14 GB per copy on disk)")
    ap.add_argument("--no-peers", action="store_true", help="skip PEFT and mergekit")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--device", default="cpu", help="also fold the 1.1B model on this device (cuda)")
    args = ap.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731
    loads = [load_avg()]
    info = machine()
    log(f"machine: {info}  load {loads[0]}")
    sizes = {"0.1B": _models.build("0.1B", 1, False, log=log), "1.1B": _models.build("1.1B", 8, True, log=log)}
    if args.large:
        free = shutil.disk_usage(_models.CACHE).free
        if free < 45e9:
            log(f"--large skipped: {free / 1e9:.0f} GB free, the 7B run needs ~45 GB (model, copy, fold output)")
        else:
            sizes["7B"] = _models.build("7B", 1, False, shard="5GB", log=log)
    bench = Bench(log)
    stats: dict = {}
    for size, built in sizes.items():
        log(f"{size}:")
        bench.floor(size, built.general)
        one = built.packs[:1]
        if size != "1.1B":
            bench.fold(size, built.general, one, fsync=True)
            if size != "7B":
                bench.fold(size, built.general, one, fsync=False)
            continue
        bench.fold(size, built.general, one, fsync=True)
        bench.fold(size, built.general, one, fsync=False, keep=True)
        bench.fold(size, built.general, built.packs[:3], fsync=False)
        bench.fold(size, built.general, built.packs[:8], fsync=False)
        if args.device != "cpu":
            bench.fold(size, built.general, one, fsync=True, device=args.device)
        bench.run("every B·A alone (1 pack, 1 thread)", size, [PY, str(HERE / "_jobs.py"), "products", str(OMEGA), str(one[0])])
        outputs = {"fold": WORK / "1.1B-fold1-nofsync"}
        if not args.no_peers:
            warm(built.general)
            peft_out = fresh(WORK / "1.1B-peft")
            settle()
            r = bench.run("PEFT load+scale+merge+save", size,
                          [PY, str(HERE / "_jobs.py"), "peft", str(built.general), str(peft_out), str(OMEGA), str(one[0])])
            if not r.error:
                outputs["PEFT"] = peft_out
            mk_out = fresh(WORK / "1.1B-mergekit")
            settle()
            r = run_mergekit(bench, built, mk_out)
            if not r.error:
                outputs["mergekit"] = mk_out
        log("  agreement check …")
        stats = agreement(built, outputs)
        for k, s in stats.items():
            log(f"    {k}: {100 * s['same'] / max(s['n'], 1):.4f} % identical, max {s['max_ulp']} ulp")
        settle(*outputs.values())
    loads.append(load_avg())
    checks = targets(bench.rows, stats, {k: v.shape for k, v in sizes.items()})
    text = render(bench.rows, stats, info, checks, (loads[0], loads[-1]))
    print()
    print(text)
    if not args.no_doc:
        write_doc(text)
        log(f"written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
