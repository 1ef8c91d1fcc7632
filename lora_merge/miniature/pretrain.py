"""Pretrain θpre on the world's corpus (a plain causal-LM loop), cached under runs/ by a hash of its settings.

A fresh machine builds the base once (its record keeps how many seconds that took); later runs with the
same world and model settings reuse the cached folder. The folder is a normal Hugging Face model folder with the
world's tokenizer and chat template, written to a temporary name and renamed into place when done.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lora_merge.core.output import staged_output
from lora_merge.core.output_kinds import PRETRAINED
from lora_merge.miniature.build import corpus_key
from lora_merge.miniature.world import World, WorldFiles

PRETRAIN_RECORD = "pretrain.json"


@dataclass(frozen=True)
class ModelShape:
    """The tiny Llama of the miniature world."""

    hidden: int = 192
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    context: int = 128


@dataclass(frozen=True)
class PretrainSettings:
    tokens: int = 1_500_000
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.1


def llama_config(shape: ModelShape, vocab_size: int, tok):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                       num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                       num_key_value_heads=shape.heads, vocab_size=vocab_size,
                       max_position_embeddings=shape.context * 2, tie_word_embeddings=False,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)


def corpus_blocks(world: World, tok, tokens: int, context: int, seed: int) -> torch.Tensor:
    """The pretraining token stream, documents joined by <eos>, cut into blocks of ``context`` tokens."""
    rng = random.Random(seed + 7)
    ids: list[int] = []
    docs = world.documents(rng)
    while len(ids) < tokens:
        ids += tok(next(docs))["input_ids"] + [tok.eos_token_id]
    n = len(ids) // context
    return torch.tensor(ids[: n * context]).view(n, context)


def base_key(seed: int, shape: ModelShape, settings: PretrainSettings) -> str:
    return corpus_key(seed, {"shape": asdict(shape), "pretrain": asdict(settings)})


def pretrain(files: WorldFiles, cache_dir: Path, seed: int, shape: ModelShape,
             settings: PretrainSettings, echo: Callable[[str], None] = print) -> tuple[Path, dict]:
    """The cached θpre folder for these settings, building it when missing. Returns (folder, record)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    key = base_key(seed, shape, settings)
    out = Path(cache_dir) / f"base-{key}"
    if (out / PRETRAIN_RECORD).is_file():
        record = json.loads((out / PRETRAIN_RECORD).read_text())
        echo(f"  θpre: cached {out} ({record['parameters'] / 1e6:.2f}M parameters, {record['tokens']:,} tokens, "
             f"built in {record['seconds']:.0f} s)")
        return out, record
    tok = AutoTokenizer.from_pretrained(files.tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(shape, len(tok), tok))
    blocks = corpus_blocks(World(seed), tok, settings.tokens, shape.context, seed)
    steps = math.ceil(len(blocks) / settings.batch)
    echo(f"  θpre: pretraining {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
         f"{blocks.numel():,} tokens ({steps} steps) — cached afterwards in {out}")
    started = time.perf_counter()
    loss = train_lm(model, blocks, settings, steps, seed, echo)
    seconds = time.perf_counter() - started
    record = {"key": key, "seed": seed, "shape": asdict(shape), "settings": asdict(settings),
              "tokens": int(blocks.numel()), "steps": steps, "final_loss": loss, "seconds": seconds,
              "parameters": sum(p.numel() for p in model.parameters())}
    with staged_output(out, force=True, kind=PRETRAINED) as tmp:  # a stale cache is replaced, never a user's folder
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / PRETRAIN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    echo(f"  θpre: done in {seconds:.0f} s, final loss {loss:.3f}")
    return out, record


def train_lm(model, blocks: torch.Tensor, s: PretrainSettings, steps: int, seed: int,
             echo: Callable[[str], None]) -> float:
    """One epoch of next-token prediction over shuffled blocks, AdamW with warmup and cosine decay."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay}, {"params": other, "weight_decay": 0}],
                            lr=s.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / s.warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    model.train()
    ema = None
    for step in range(steps):
        batch = blocks[order[step * s.batch:(step + 1) * s.batch]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % max(1, steps // 8) == 0 or step == steps - 1:
            echo(f"    step {step + 1}/{steps}  loss {ema:.3f}")
    model.eval()
    return float(ema)
