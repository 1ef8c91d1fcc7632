"""The fold side by side with its peers and the I/O floor: `make bench` (add `--large` for the 7B model).

Builds (once, cached under benchmarks/.cache/) synthetic Llama-shaped bf16 models with
rank-16 LoRA packs on every linear layer (benchmarks/_models.py), then measures, each in
its own subprocess, with the page cache warm: `cp -r` of θG (with and without `sync`),
our fold with 1, 3 and 8 packs and with TIES and DARE-TIES on 3 packs (timed in turns), the merge arithmetic
alone (1 and 3 packs), PEFT's load + scale + merge_and_unload + save_pretrained, and mergekit's
task_arithmetic recipe (θpre base, θG at 1, θpre+LoRA at ω) in its own venv, then the start-up of the
command line (benchmarks/_startup.py). For each: the job's time and the whole process's wall time, peak RSS,
peak anonymous RSS, bytes read and written. The outputs are checked against the bf16 of the float32 result.
A table is printed and written into docs/benchmarks.md (between markers, so other sections of that file stay).

`--device cuda` adds the 1.1B folds on the GPU (one pack durable; 3 packs linear, TIES and DARE-TIES) and
stops at once, naming the reason, when there is no CUDA device; `--device cuda --no-peers` is the GPU check.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import _models  # noqa: E402
from _measure import GB, Row, measure  # noqa: E402
from _report import OMEGA, agreement, machine, render, targets, write_doc  # noqa: E402
from _startup import startup_rows  # noqa: E402

PY = sys.executable
WORK = _models.CACHE / "runs"
MERGEKIT_VENV = _models.CACHE / "mergekit-venv"
REPEAT = 3  # timings a target divides are the best of this many runs (see Bench.run)
RULES = ("ties", "dare_ties")  # the pruning rules timed against the linear fold of the same 3 packs


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

    def run(self, label: str, size: str, cmd: list[str], repeat: int = 1, before=None) -> Row:
        """Measure ``cmd``; with ``repeat`` > 1 keep the fastest run and note every time (see interleaved)."""
        return self.interleaved(size, [(label, cmd)], repeat, before)[0]

    def interleaved(self, size: str, jobs: list[tuple[str, list[str]]], repeat: int = 1, before=None) -> list[Row]:
        """Measure every (label, cmd) ``repeat`` times, round-robin; each row keeps its fastest run and notes all.

        Writing the same bytes into the page cache can cost several times more or less depending on what a VM's
        memory was doing just before: a guest whose balloon reports free pages to the host
        (VIRTIO_BALLOON_F_REPORTING) pays a fault on the next first touch of each page the host took back
        (docs/benchmarks.md, "Profiled first: where a fold's time goes", has the spread measured on the
        development VM). So one sample of a row is noise; every row that a target divides is timed several
        times and its best kept, and rows that a ratio compares are timed in turns, so that each sees the machine
        in the same states.
        """
        samples: dict[str, list[Row]] = {label: [] for label, _ in jobs}
        for _ in range(repeat):
            for label, cmd in jobs:
                if before is not None:
                    before()
                log = WORK / f"{size}-{label.replace(' ', '_').replace('/', '_')}.log"
                samples[label].append(measure(label, size, cmd, log))
        return [self._keep_best(size, label, runs) for label, runs in samples.items()]

    def _keep_best(self, size: str, label: str, samples: list[Row]) -> Row:
        row = min(samples, key=lambda r: (r.error is not None, r.seconds))
        row.peak_rss, row.peak_anon = max(r.peak_rss for r in samples), max(r.peak_anon for r in samples)
        row.samples = [r.seconds for r in samples]
        if len(samples) > 1:
            row.notes.append(f"best of {len(samples)} ({', '.join(f'{r.seconds:.2f}' for r in samples)} s)")
        row.notes.append(f"load {load_avg()}")
        self.rows.append(row)
        self.log(f"  {size:5} {label:34} {row.seconds:7.2f} s  wall {row.wall_s:7.2f} s  "
                 f"peak RSS {row.peak_rss / GB:5.2f} GB  anon {row.peak_anon / GB:5.2f} GB"
                 + (f"  ({row.notes[0]})" if len(samples) > 1 else "") + (f"  ERROR {row.error}" if row.error else ""))
        return row

    def floor(self, size: str, general: Path) -> tuple[Row, Row]:
        """`cp -r` of θG (best of REPEAT, like the folds) and one `sync` after it."""
        warm(general)
        dst = WORK / f"{size}-cp"
        cp = self.run("cp -r", size, ["cp", "-r", str(general), str(dst)], REPEAT, before=lambda: settle(dst))
        sync = self.run("sync (after cp -r)", size, ["sync"])
        settle(dst)
        return cp, sync

    def fold_job(self, size: str, general: Path, packs: list[Path], fsync: bool, device: str = "cpu",
                 method: str = "linear") -> tuple[str, list[str], Path]:
        """The label, command and output folder of one fold row; its inputs are warmed in the page cache."""
        for folder in (general, *packs):  # warm for every input, not θG alone
            warm(folder)
        out = WORK / f"{size}-fold{len(packs)}{'' if fsync else '-nofsync'}{'' if method == 'linear' else '-' + method}"
        label = f"fold, {len(packs)} pack{'s' if len(packs) > 1 else ''}" + ("" if fsync else ", no fsync") \
            + (f", {device}" if device != "cpu" else "") + (f", {method} d=0.5" if method != "linear" else "")
        cmd = [PY, str(HERE / "_jobs.py"), "fold", str(general), str(out), str(OMEGA), *map(str, packs)]
        cmd += ([] if fsync else ["--no-fsync"]) + ([f"--device={device}"] if device != "cpu" else [])
        cmd += [f"--method={method}"] if method != "linear" else []
        return label, cmd, out

    def fold(self, size: str, general: Path, packs: list[Path], fsync: bool, device: str = "cpu",
             method: str = "linear", repeat: int = 1) -> Row:
        label, cmd, out = self.fold_job(size, general, packs, fsync, device, method)
        row = self.run(label, size, cmd, repeat, before=lambda: settle(out))
        settle(out)
        return row

    def folds_in_turns(self, size: str, general: Path, pack_sets: list[tuple[list[Path], str]], repeat: int,
                       device: str = "cpu") -> Path:
        """Folds (no fsync) with each (packs, method), timed in turns for the ratios between them; every sample
        starts right after the previous one's output was deleted and flushed. Returns the first set's output,
        which is made once more (untimed) and kept for the agreement check."""
        jobs = [self.fold_job(size, general, packs, False, device, method) for packs, method in pack_sets]
        outs = [out for *_, out in jobs]
        self.interleaved(size, [(label, cmd) for label, cmd, _ in jobs], repeat, before=lambda: settle(*outs))
        settle(*outs)
        subprocess.run(jobs[0][1], check=True, capture_output=True)
        settle()  # flushed, so its writeback does not bill the next row
        return outs[0]


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


def require_device(device: str) -> None:
    """Stop before anything is built when the device asked for is not here (the GPU check on a CPU machine)."""
    if device == "cpu":
        return
    import torch

    if not device.startswith("cuda"):
        raise SystemExit(f"benchmarks/fold.py: --device {device!r}: use cpu or cuda")
    if not torch.cuda.is_available():
        raise SystemExit(f"benchmarks/fold.py: --device {device} needs a CUDA GPU, and there is none here "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); run it on the GPU "
                         "machine, or leave --device out for the CPU rows")


def device_rows(bench: Bench, size: str, built: _models.Built, device: str) -> None:
    """The folds on ``device``: one pack durable, then 3 packs linear, TIES and DARE-TIES timed in turns."""
    one, three = built.packs[:1], built.packs[:3]
    bench.fold(size, built.general, one, fsync=True, device=device, repeat=REPEAT)
    out = bench.folds_in_turns(size, built.general, [(three, "linear")] + [(three, rule) for rule in RULES], REPEAT,
                               device=device)
    settle(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", action="store_true", help="also the 7B model (~14 GB per copy on disk)")
    ap.add_argument("--no-peers", action="store_true", help="skip PEFT and mergekit")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--device", default="cpu", help="also fold the 1.1B model on this device (cuda)")
    args = ap.parse_args()
    require_device(args.device)
    log = lambda m: print(m, flush=True)  # noqa: E731
    loads = [load_avg()]
    info = machine()
    log(f"machine: {info}  load {loads[0]}")
    sizes = {"0.1B": _models.build("0.1B", 1, False, log=log), "1.1B": _models.build("1.1B", 8, True, log=log)}
    if args.large:
        # θG itself (unless already built), one copy for cp -r and one fold output at a time, plus room to spare
        model = 2 * _models.SHAPES["7B"].params()
        need = (2 if (_models.CACHE / "7B" / "general").is_dir() else 3) * model + 3e9
        free = shutil.disk_usage(_models.CACHE).free
        if free < need:
            log(f"--large skipped: {free / 1e9:.0f} GB free, the 7B run needs ~{need / 1e9:.0f} GB (model, copy, "
                "fold output)")
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
        bench.fold(size, built.general, one, fsync=True, repeat=REPEAT)
        three = built.packs[:3]
        kept = bench.folds_in_turns(size, built.general, [(one, "linear"), (three, "linear"), (built.packs[:8], "linear")]
                                    + [(three, rule) for rule in RULES], REPEAT)
        for flags, label in (([], "with sign conflicts"), (["--no-signs"], "low-rank route only")):
            bench.run(f"pack interference, 3 packs, {label}", size,
                      [PY, str(HERE / "_jobs.py"), "interference", *map(str, built.packs[:3]), *flags])
        if args.device != "cpu":
            device_rows(bench, size, built, args.device)
        for n in (1, 3):  # the compute floor: the fold's own tiled kernel on every touched tensor, no file I/O
            warm(built.general)
            bench.run(f"merge arithmetic alone, {n} pack{'s' if n > 1 else ''} (1 thread)", size,
                      [PY, str(HERE / "_jobs.py"), "arithmetic", str(built.general), str(OMEGA),
                       *map(str, built.packs[:n])], REPEAT)
        outputs = {"fold": kept}
        if not args.no_peers:
            warm(built.general)
            peft_out = WORK / "1.1B-peft"
            r = bench.run("PEFT load+scale+merge+save", size,
                          [PY, str(HERE / "_jobs.py"), "peft", str(built.general), str(peft_out), str(OMEGA), str(one[0])],
                          REPEAT, before=lambda p=peft_out: settle(p))
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
    startup_rows(bench, sizes["1.1B"].packs[0])
    loads.append(load_avg())
    checks = targets(bench.rows, stats, {k: v.shape for k, v in sizes.items()})
    text = render(bench.rows, stats, info, checks, (loads[0], loads[-1]))
    print()
    print(text)
    if not args.no_doc:
        write_doc(text)
        log("written to docs/benchmarks.md")


if __name__ == "__main__":
    main()
