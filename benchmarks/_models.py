"""Synthetic Llama-shaped bf16 models and rank-16 LoRA packs for the fold benchmark, built once and cached.

Weights are random (θpre ~ N(0, 0.02), θG = θpre + N(0, 0.002)), written straight
as sharded safetensors with a Llama config, so transformers, PEFT and mergekit load
them like real checkpoints. LoRA packs are written straight as PEFT adapters
(adapter_config.json + adapter_model.safetensors), A ~ U(±1/√in) as PEFT initialises
it and B ~ N(0, 0.002) as a short training leaves it. Nothing here instantiates a model.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_merge.io.shards import PlannedTensor, ShardedWriter, save_tensors

CACHE = Path(__file__).resolve().parent / ".cache"
RANK, ALPHA = 16, 32
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int = 32000

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        h, i, kv = self.hidden, self.intermediate, self.hidden // self.heads * self.kv_heads
        return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}

    def tensors(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, self.hidden)}
        for layer in range(self.layers):
            p = f"model.layers.{layer}."
            out[p + "input_layernorm.weight"] = (self.hidden,)
            for mod, shape in self.linear_shapes().items():
                out[p + mod + ".weight"] = shape
            out[p + "post_attention_layernorm.weight"] = (self.hidden,)
        out["model.norm.weight"] = (self.hidden,)
        out["lm_head.weight"] = (self.vocab, self.hidden)
        return out

    def params(self) -> int:
        return sum(_numel(s) for s in self.tensors().values())

    def largest(self) -> int:
        return max(_numel(s) for s in self.tensors().values())

    def config(self) -> dict:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "vocab_size": self.vocab,
                "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "hidden_act": "silu", "tie_word_embeddings": False, "dtype": "bfloat16",
                "bos_token_id": 1, "eos_token_id": 2}


SHAPES = {
    "0.1B": Shape("0.1B", 768, 2048, 12, 12, 4),
    "1.1B": Shape("1.1B", 2048, 5632, 22, 32, 4),  # TinyLlama
    "7B": Shape("7B", 4096, 11008, 32, 32, 32),  # Llama-2-7B
}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _gen(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(":".join(map(str, parts)).encode()))


_BLOCK: dict[str, torch.Tensor] = {}


def _weights(shape: Shape, name: str, role: str) -> torch.Tensor:
    dims = shape.tensors()[name]
    if name.endswith("norm.weight"):
        return torch.ones(dims, dtype=torch.bfloat16)
    if shape.params() > 3e9:  # 7B: a random 16M-value block repeated at a per-tensor offset (drawing every value
        # would make building the model take far longer than the benchmark's own runs)
        block = _BLOCK.setdefault("b", (torch.randn(1 << 24, generator=_gen("block")) * 0.02).to(torch.bfloat16))
        n, shift = _numel(dims), zlib.crc32(name.encode()) % (1 << 24)
        reps = -(-(n + shift) // block.numel())
        return block.repeat(reps)[shift: shift + n].view(dims).clone()
    pre = torch.randn(dims, generator=_gen(shape.name, name, "pre")) * 0.02
    if role == "general":
        pre += torch.randn(dims, generator=_gen(shape.name, name, "general")) * 0.002
    return pre.to(torch.bfloat16)


def _write_model(shape: Shape, folder: Path, role: str, shard: str) -> None:
    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    plan = [PlannedTensor(n, torch.bfloat16, s) for n, s in shape.tensors().items()]
    from lora_merge.io.shards import parse_size

    writer = ShardedWriter(tmp, plan, parse_size(shard), fsync=False)
    for p in plan:
        writer.write(p.name, _weights(shape, p.name, role))
    writer.finish()
    (tmp / "config.json").write_text(json.dumps(shape.config(), indent=2))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    tmp.rename(folder)


def _write_pack(shape: Shape, folder: Path, index: int, base: Path) -> None:
    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {}
    for layer in range(shape.layers):
        for mod, (out_f, in_f) in shape.linear_shapes().items():
            key = f"base_model.model.model.layers.{layer}.{mod}"
            g = _gen(shape.name, "pack", index, key)
            bound = 1 / in_f**0.5
            tensors[key + ".lora_A.weight"] = torch.rand((RANK, in_f), generator=g) * (2 * bound) - bound
            tensors[key + ".lora_B.weight"] = torch.randn((out_f, RANK), generator=g) * 0.002
    save_tensors(tmp / "adapter_model.safetensors", tensors, {"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
           "target_modules": list(LINEAR), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
           "use_dora": False, "base_model_name_or_path": str(base), "inference_mode": True}
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(folder)


@dataclass(frozen=True)
class Built:
    shape: Shape
    general: Path
    base: Path | None
    packs: list[Path]


def build(size: str, packs: int, with_base: bool, shard: str = "1GB", log=print) -> Built:
    """The cached θG (and θpre) of ``size`` with ``packs`` LoRA packs; builds what is missing."""
    shape = SHAPES[size]
    root = CACHE / size
    general, base = root / "general", root / "base"
    if not general.is_dir():
        log(f"building θG {size} ({shape.params() / 1e9:.2f}B params) …")
        _write_model(shape, general, "general", shard)
    if with_base and not base.is_dir():
        log(f"building θpre {size} …")
        _write_model(shape, base, "pre", shard)
    pack_dirs = []
    for i in range(packs):
        d = root / "packs" / f"skill{i}"
        if not d.is_dir():
            log(f"building LoRA pack {d.name} for {size} …")
            _write_pack(shape, d, i, base)
        pack_dirs.append(d)
    return Built(shape, general, base if with_base else None, pack_dirs)
