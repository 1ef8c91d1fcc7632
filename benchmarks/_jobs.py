"""The Python jobs the fold benchmark measures, one per subprocess (clean peak RSS for each).

Each prints a last line ``{"work_s": …}``: the seconds of the job itself, after the
interpreter and its imports started (the harness also records the process's wall time).

    python benchmarks/_jobs.py fold GENERAL OUT W PACK [PACK …] [--no-fsync] [--device=cpu|cuda] [--method=ties]
    python benchmarks/_jobs.py interference PACK [PACK …] [--no-signs]   # pairwise cosines, conflicts and norms
    python benchmarks/_jobs.py arithmetic GENERAL W PACK [PACK …]  # the fold's merge kernel alone, 1 thread
    python benchmarks/_jobs.py peft GENERAL OUT W PACK  # load + scale + merge_and_unload + save_pretrained
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def job_fold(args: list[str]) -> None:
    from lora_merge.fold.write import FoldRequest, fold

    flags = [a for a in args if a.startswith("--")]
    device = next((f.split("=", 1)[1] for f in flags if f.startswith("--device=")), "cpu")
    method = next((f.split("=", 1)[1] for f in flags if f.startswith("--method=")), "linear")
    general, out, w, *packs = [a for a in args if not a.startswith("--")]
    t = time.perf_counter()
    fold(FoldRequest(general=Path(general), packs=packs, out=Path(out), weights=[float(w)] * len(packs),
                     progress=False, fsync="--no-fsync" not in flags, device=device, method=method,
                     density=0.5 if method != "linear" else 1.0, seed=0))
    print(json.dumps({"work_s": time.perf_counter() - t}), flush=True)
    os._exit(0)  # as `python cli.py fold` leaves (lora_merge.cli.run), so the wall column is the command's


def job_interference(args: list[str]) -> None:
    from click.testing import CliRunner

    from lora_merge.cli import main

    packs = [a for a in args if not a.startswith("--")]
    flags = [a for a in args if a.startswith("--")]
    t = time.perf_counter()
    res = CliRunner().invoke(main, ["pack", "interference", "--adapters", ",".join(packs), *flags,
                                    "--out", str(Path(packs[0]).parent / "interference.png")])
    if res.exit_code != 0:
        raise SystemExit(res.output)
    print(json.dumps({"work_s": time.perf_counter() - t}))


def job_arithmetic(args: list[str]) -> None:
    """The fold's own tiled merge kernel (cast in, B @ A, cast out, finiteness check) over every touched tensor,
    one thread, no file I/O beyond θG's page-cached map: the arithmetic floor one merge worker cannot go under."""
    import torch

    from lora_merge.fold.plan import plan_fold
    from lora_merge.fold.request import FoldRequest
    from lora_merge.fold.stream import merge_terms, merged_tiles, tile_elements
    from lora_merge.io.numerics import all_finite

    torch.set_num_threads(1)  # as each of the fold's merge workers computes
    packs = args[2:]
    plan = plan_fold(FoldRequest(general=Path(args[0]), packs=packs, out=Path(args[0]).parent / "unused",
                                 adapters_dir=Path("."), weights=[float(args[1])] * len(packs)))
    general, vectors = plan.general, plan.vectors()
    cpu = torch.device("cpu")
    terms = {n: merge_terms(vectors, n, cpu) for n in general.keys() if any(n in v for v in vectors)}
    need = max(tile_elements(tuple(general.info(n).shape)) for n in terms)
    scratch, tile = torch.empty(need, dtype=torch.float32), torch.empty(need * 4, dtype=torch.uint8)

    def merge(n: str) -> None:  # what a fold worker does to a touched tensor, less the write
        theta = general.get(n)
        for _, rows in merged_tiles(theta, terms[n], scratch, tile.view(theta.dtype)):
            all_finite(rows)

    for n in list(terms)[:2]:  # warm the kernels and the map, then time every tensor
        merge(n)
    t = time.perf_counter()
    for n in terms:
        merge(n)
    print(json.dumps({"work_s": time.perf_counter() - t}))


def job_peft(args: list[str]) -> None:
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    general, out, w, pack = args
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(general, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, pack)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.scaling:
                module.scaling[name] *= float(w)
    merged = model.merge_and_unload()
    merged.save_pretrained(out)
    print(json.dumps({"work_s": time.perf_counter() - t}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    {"fold": job_fold, "arithmetic": job_arithmetic, "peft": job_peft, "interference": job_interference}[sys.argv[1]](sys.argv[2:])
