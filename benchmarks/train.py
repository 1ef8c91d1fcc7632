"""Training throughput: `python benchmarks/train.py` (our `train_skill` against a plain TRL script).

For a pico Llama and a ~10M-parameter Llama, both built locally with a character tokenizer, on synthetic
prompt/completion data, each run in its own subprocess (so peak RSS is its own): our `train_skill` (LoRA, PTM,
writing the pack) and a plain TRL `SFTTrainer` + PEFT `LoraConfig` script with the same settings (saving the
adapter). Time covers model load, data preparation, training and saving. Reported: trained tokens/s, wall
seconds, peak RSS, and our overhead against the plain script (target ≤ 5 %). CPU only; on a GPU machine the
same runs use it through the Trainer.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _rate import rate_line  # noqa: E402

MODELS = {"pico": dict(hidden=32, layers=2), "10M": dict(hidden=384, layers=8)}
SETTINGS = dict(rank=8, alpha=16, dropout=0.0, lr=1e-3, batch_size=8, max_length=128, seed=0, warmup=0.0)


def rows(n: int) -> list[dict]:
    return [{"prompt": f"add {i} and {i * 7 % 13}: ", "completion": f"{i + i * 7 % 13} (sum of {i} and {i * 7 % 13})"}
            for i in range(n)]


def build(folder: Path, model: str) -> Path:
    from lora_merge.pico import pico_char_tokenizer, pico_model, save_model

    save_model(pico_model("llama", **MODELS[model]), folder)
    pico_char_tokenizer(folder)
    return folder


def run_ours(base: Path, data: list[dict], steps: int, work: Path) -> int:
    from lora_merge.train.run import train_skill
    from lora_merge.train.training_recipe import load_training_recipe

    r = load_training_recipe(None, dict(base=base, data=data, name="bench", mode="lora", max_steps=steps,
                               adapters_dir=work / "adapters", run_dir=work / "run", save_steps=10**6,
                               progress=False, logging_steps=10**6, **SETTINGS))
    res = train_skill(r)
    return res.tokens * steps * SETTINGS["batch_size"] // res.instances


def run_plain(base: Path, data: list[dict], steps: int, work: Path) -> int:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    s = SETTINGS
    args = SFTConfig(output_dir=str(work / "run"), max_steps=steps, learning_rate=s["lr"], warmup_steps=s["warmup"],
                     per_device_train_batch_size=s["batch_size"], max_length=s["max_length"], seed=s["seed"],
                     use_cpu=True, bf16=False, activation_checkpointing=False, optim="adamw_torch",
                     save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10**6)
    peft = LoraConfig(r=s["rank"], lora_alpha=s["alpha"], lora_dropout=s["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base), args=args,
                         train_dataset=Dataset.from_list(data), processing_class=AutoTokenizer.from_pretrained(base),
                         peft_config=peft)
    trainer.train()
    trainer.model.save_pretrained(work / "adapter")
    ds = trainer.train_dataset
    return sum(len(x) for x in ds["input_ids"]) * steps * s["batch_size"] // len(ds)


def one(impl: str, base: Path, steps: int, n_rows: int) -> dict:
    """Run one measurement in this process and return its figures."""
    data = rows(n_rows)
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        tokens = (run_ours if impl == "ours" else run_plain)(base, data, steps, Path(work))
        wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux → MiB
    return {"impl": impl, "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall),
            "peak_rss_mib": round(peak)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="alternate ours/plain this many times, keep the best")
    ap.add_argument("--one", nargs=2, metavar=("IMPL", "BASE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], Path(a.one[1]), a.steps, a.rows)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(rate_line())  # beside the timings: what this machine's BLAS does on the training step's shape
        print(f"{'model':<6} {'impl':<6} {'tokens/s':>9} {'wall s':>7} {'peak RSS MiB':>13}")
        for model in MODELS:
            base = build(Path(tmp) / model, model)
            best: dict[str, dict] = {}
            for _ in range(a.repeats):
                for impl in ("plain", "ours"):
                    cmd = [sys.executable, __file__, "--one", impl, str(base), "--steps", str(a.steps),
                           "--rows", str(a.rows)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
                    fig = json.loads(out.stdout.strip().splitlines()[-1])
                    if impl not in best or fig["wall_s"] < best[impl]["wall_s"]:
                        best[impl] = fig
            for impl in ("plain", "ours"):
                f = best[impl]
                print(f"{model:<6} {impl:<6} {f['tokens_per_s']:>9} {f['wall_s']:>7} {f['peak_rss_mib']:>13}")
            overhead = best["ours"]["wall_s"] / best["plain"]["wall_s"] - 1
            print(f"{model:<6} overhead of train_skill against plain TRL: {overhead:+.1%} wall time")


if __name__ == "__main__":
    main()
