"""The device check for multi-process training: `python benchmarks/gpu_train.py` on a machine with CUDA GPUs.

Runs, on a randomly initialised ~0.1B Llama with a character tokenizer (built here; nothing is downloaded),
the two GPU settings this project ships, each as a user would launch it, and prints tokens/s, wall time and
peak GPU memory (sampled with nvidia-smi):

1. single-GPU QLoRA: `python cli.py train --config configs/train/qlora-24gb.yaml …` (bitsandbytes 4-bit);
2. full-parameter FSDP: `accelerate launch --config_file configs/accelerate/fsdp-full.yaml --num_processes N
   cli.py train --config configs/train/full.yaml … --set gradient_checkpointing=false` on every visible GPU.

Each run must write one verified pack; the figures go to stdout and to $OUT/gpu_train.json when OUT is set.
Without CUDA it stops at once with a message (CI never runs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STEPS = 30


def build(folder: Path) -> Path:
    from lora_merge.pico import pico_char_tokenizer, pico_model, save_model

    save_model(pico_model("llama", hidden=768, layers=12), folder)
    pico_char_tokenizer(folder)
    return folder


def data(path: Path) -> Path:
    rows = [{"prompt": f"add {i} and {i * 7 % 13}: ", "completion": f"{i + i * 7 % 13} (sum of {i} and {i * 7 % 13})"}
            for i in range(512)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class GpuMemory:
    """Peak memory.used over all GPUs (MiB), sampled every 0.2 s while a run is going."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            used = sum(int(x) for x in out.stdout.split() if x.strip().isdigit())
            self.peak = max(self.peak, used)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run(label: str, cmd: list[str], pack: Path) -> dict:
    from lora_merge.pack.skillpack import load_pack

    started = time.perf_counter()
    with GpuMemory() as mem:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"run": label, "ok": False, "error": proc.stderr[-2000:]}
    m = load_pack(pack).manifest  # verified: the main process wrote it whole
    tokens = m.data.tokens * m.training.steps * 8 // max(m.data.instances, 1)
    return {"run": label, "ok": True, "wall_s": round(wall, 1), "train_s": round(m.training.wall_seconds, 1),
            "tokens_per_s": round(tokens / m.training.wall_seconds), "peak_gpu_mib": mem.peak, "steps": m.training.steps}


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_train.py needs CUDA GPUs; run it on a GPU machine")
    gpus = torch.cuda.device_count()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, rows = build(tmp / "base"), data(tmp / "skill.jsonl")
        common = ["--base", str(base), "--data", str(rows), "--adapters-dir", str(tmp / "adapters"),
                  "--max-steps", str(STEPS), "--no-progress", "--set", "batch_size=8", "--set", "save_steps=100000"]
        results.append(run("qlora 1 GPU", [sys.executable, "cli.py", "train", "--config", "configs/train/qlora-24gb.yaml",
                                           "--name", "q", "--run-dir", str(tmp / "rq"), *common], tmp / "adapters" / "q"))
        accelerate = str(Path(sys.executable).with_name("accelerate"))
        results.append(run(f"full FSDP {gpus} GPU", [
            accelerate, "launch", "--config_file", "configs/accelerate/fsdp-full.yaml", "--num_processes", str(gpus),
            "cli.py", "train", "--config", "configs/train/full.yaml", "--name", "f", "--run-dir", str(tmp / "rf"),
            "--set", "gradient_checkpointing=false", *common], tmp / "adapters" / "f"))
    for r in results:
        print(json.dumps(r))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_train.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
