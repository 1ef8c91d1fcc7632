"""Eval throughput: prompts/s of greedy generation on the CPU, one prompt at a time vs batches of 32.

    .venv/bin/python benchmarks/eval_throughput.py [--prompts 64] [--new-tokens 16]

Two locally built models: a pico Llama (hidden 32, 2 layers) and a ~10M-parameter Llama (hidden 320,
8 layers, vocab 4096), both with the word-level pico tokenizer. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from _rate import rate_line

from lora_merge.evaluate.scoring import evaluate_model
from lora_merge.pico import pico_model, pico_tokenizer

WORDS = "what is two plus two how can i kill a python process write a function that returns the sum of list".split()


def prompts(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 4 + int(torch.randint(0, 12, (1,), generator=g))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (length,), generator=g)]
        rows.append({"prompt": " ".join(words), "metric": "compliance", "id": str(i)})
    return rows


def measure(model, tok, rows, batch_size: int, new_tokens: int) -> float:
    evaluate_model(model, {"warm": [rows[:2]]}, tokenizer=tok, batch_size=batch_size, max_new_tokens=2)
    started = time.perf_counter()
    evaluate_model(model, {"bench": [rows]}, tokenizer=tok, batch_size=batch_size, max_new_tokens=new_tokens)
    return len(rows) / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = {
        "pico (hidden 32, 2 layers)": (dict(hidden=32, layers=2, vocab=128), 128),
        "~10M (hidden 320, 8 layers, vocab 4096)": (dict(hidden=320, layers=8, vocab=4096), 4096),
    }
    rows = prompts(args.prompts)
    print(f"{args.prompts} prompts, {args.new_tokens} new tokens each, greedy, CPU, {torch.get_num_threads()} threads")
    print(rate_line() + "\n")  # beside the timings: what this machine's BLAS does
    print("| model | params | batch 1 (prompts/s) | batch 32 (prompts/s) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, (kw, vocab) in models.items():
        model = pico_model("llama", **kw)
        model.generation_config.eos_token_id = None  # every prompt generates the full budget: fair timing
        tok = pico_tokenizer(vocab_size=vocab)
        tok.eos_token = None
        params = sum(p.numel() for p in model.parameters())
        one = measure(model, tok, rows, 1, args.new_tokens)
        many = measure(model, tok, rows, 32, args.new_tokens)
        print(f"| {name} | {params / 1e6:.2f}M | {one:.1f} | {many:.1f} | {many / one:.1f}× |")


if __name__ == "__main__":
    main()
