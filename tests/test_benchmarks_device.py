"""The GPU check of the fold benchmark (`benchmarks/fold.py --device cuda --no-peers`): it stops at once, naming
why, where there is no CUDA device, and the fold job its GPU rows run works through the same code on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_benchmark_stops_before_building_anything_without_cuda():
    res = subprocess.run([sys.executable, "benchmarks/fold.py", "--device", "cuda", "--no-peers", "--no-doc"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "needs a CUDA GPU, and there is none here" in res.stderr
    assert "building" not in res.stdout  # stopped before any model was built


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties"])
def test_the_gpu_rows_fold_job_runs_on_the_cpu(tmp_path, method):
    """benchmarks/_jobs.py fold with --device=cpu: the job the GPU rows run, the same code with another device."""
    pre = pico_model("llama")
    general = save_model(pico_model("llama", seed=1), tmp_path / "general")
    packs = [make_lora_pack(pre, None, tmp_path / f"p{i}", f"p{i}", seed=i + 1) for i in range(3)]
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "benchmarks/_jobs.py", "fold", str(general), str(out), "0.3",
                          *map(str, packs), "--no-fsync", "--device=cpu", f"--method={method}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["work_s"] > 0
    merged, g = state_of(out), state_of(general)
    assert merged.keys() == g.keys() and any(not torch.equal(merged[k], g[k]) for k in g)
