"""A fold walk-through on a pico model: θpre, θG, two LoRA skill packs, one fold."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from lora_merge.core.model_record import MODEL_RECORD
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pico import make_lora_pack, perturbed, pico_model, save_model, state_of, token_batch


def run_walkthrough(workdir: Path, echo: Callable[[str], None] = print) -> Path:
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    adapters = workdir / "adapters"
    adapters.mkdir(parents=True)
    echo("1. building a pico Llama θpre and a general model θG (θpre plus a small update) …")
    pre = pico_model("llama", hidden=64, vocab=256)
    general = perturbed(pre, seed=1)
    save_model(pre, workdir / "pretrained")
    save_model(general, workdir / "general")
    # |G|: the toolkit records the general model's training size beside it.
    (workdir / "general" / MODEL_RECORD).write_text('{"role": "general", "data": {"instances": 1000}}\n')
    echo("2. making two LoRA skill packs on θpre with PEFT (safety: |D| = 240, coding: |D| = 570) …")
    make_lora_pack(pre, workdir / "pretrained", adapters / "safety", "safety", seed=2, instances=240,
                   target_modules=["q_proj", "v_proj"])
    make_lora_pack(pre, workdir / "pretrained", adapters / "coding", "coding", seed=3, instances=570, r=8,
                   lora_alpha=16, target_modules="all-linear")
    echo("3. folding both into θG with ω = |D|/|G| …")
    out = workdir / "merged"
    res = fold(FoldRequest(general=workdir / "general", packs=["safety", "coding"], adapters_dir=adapters, out=out,
                           progress=False))
    for p in res.packs:
        echo(f"   {p.name:<8} ω = {p.weight.value:.3f} ({p.weight.formula}), {p.tensors} tensors")
    before, after = state_of(workdir / "general"), state_of(out)
    echo("4. what changed (relative change ‖θ − θG‖ / ‖θG‖ per tensor, largest first):")
    diffs = sorted(((float((after[k] - before[k]).norm() / before[k].norm()), k) for k in before), reverse=True)
    for rel, k in diffs[:6]:
        echo(f"   {rel:8.4f}  {k}")
    echo(f"   … {sum(1 for r, _ in diffs if r > 0)}/{len(diffs)} tensors changed in all")
    from transformers import AutoModelForCausalLM

    x = token_batch(vocab=256)
    with torch.no_grad():
        lg = general(x).logits
        lm = AutoModelForCausalLM.from_pretrained(out).eval()(x).logits
    echo(f"5. the merged model loads with from_pretrained; mean |Δlogits| vs θG = {float((lm - lg).abs().mean()):.4f}")
    echo(f"\nmerged model: {out}\nmodel card:   {out / 'README.md'}\npacks:        {adapters}")
    echo(f"try: python cli.py pack inspect {adapters / 'safety'}")
    return out
