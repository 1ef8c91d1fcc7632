"""Task vectors from full-parameter models: τ = θD − θpre, dense or compressed to LoRA by truncated SVD.

``extract_pack`` pairs every weight of the finetuned model θD with θpre's and
streams τ one tensor at a time (a 7B pair never needs more than a few of its
tensors in memory) into a temporary folder that is renamed into place when
complete, so a failed extraction leaves nothing behind.

- dense: ``task_vector.safetensors`` holding τ for every floating weight.
- ``rank=R``: a PEFT LoRA adapter. Each 2-D module weight's τ is cut to its best
  rank-R approximation U_R·S_R·V_Rᵀ (Eckart–Young), stored as B = U_R·√S_R,
  A = √S_R·V_Rᵀ with lora_alpha = r (scale 1). Tensors LoRA cannot hold
  (norms, biases, 2-D parameters that are not Linear/Embedding/Conv1D weights)
  are dropped and counted in the error report.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge import __version__
from lora_merge.core import console
from lora_merge.core.device import resolve_device
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.names import check_name
from lora_merge.core.output import check_output, staged_output
from lora_merge.core.output_kinds import PACK
from lora_merge.io.fingerprint import fingerprint_model
from lora_merge.io.shards import PlannedTensor, ShardedWriter
from lora_merge.io.tensors import DTYPES, SINGLE_NAME, WeightSet
from lora_merge.pack.provenance import sketch_pack
from lora_merge.pack.skillpack import (
    ADAPTER_WEIGHTS,
    DEFAULT_REGISTRY,
    DENSE_WEIGHTS,
    DataInfo,
    Manifest,
    TrainingInfo,
    write_manifest,
)
from lora_merge.pack.task_vector import EMBEDDING_SUFFIXES, PEFT_PREFIX
from lora_merge.rules.omega import general_size_from_folder

PACK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ONE_FILE = 1 << 62  # a pack is one safetensors file, however large


@dataclass
class ExtractRequest:
    """Everything `cli.py extract` can say."""

    model: Path
    base: Path
    name: str
    out: Path | None = None  # default: <adapters_dir>/<name>
    adapters_dir: Path = DEFAULT_REGISTRY
    rank: int | None = None
    instances: int | None = None
    description: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    force: bool = False
    progress: bool = True


@dataclass
class WeightError:
    """How well one weight's τ survived: ‖τ − B·A‖ / ‖τ‖ (rank 0: dropped, error 1)."""

    name: str
    shape: tuple[int, ...]
    rank: int
    norm: float
    error_norm: float

    @property
    def relative(self) -> float:
        return self.error_norm / self.norm if self.norm > 0 else 0.0


@dataclass
class ExtractResult:
    out: Path
    kind: str
    tensors: int
    bytes_written: int
    seconds: float
    errors: list[WeightError] = field(default_factory=list)

    @property
    def overall_error(self) -> float | None:
        """‖τ − τ_R‖ / ‖τ‖ over the whole model (dropped tensors count in full); None for dense packs."""
        if self.kind == "dense":
            return None
        total = math.sqrt(sum(e.norm**2 for e in self.errors))
        return math.sqrt(sum(e.error_norm**2 for e in self.errors)) / total if total > 0 else 0.0


def paired_weights(model: WeightSet, base: WeightSet) -> list[str]:
    """The floating weights θD and θpre share, refusing models whose names or shapes differ."""
    only_model = sorted(set(model.keys()) - set(base.keys()))
    only_base = sorted(set(base.keys()) - set(model.keys()))
    if only_model or only_base:
        detail = "; ".join(part for part in (
            f"only in the model: {', '.join(only_model[:3])}" if only_model else "",
            f"only in the base: {', '.join(only_base[:3])}" if only_base else "") if part)
        raise LoraMergeError(f"the model and the base hold different weights ({detail}); --model must be --base "
                             "finetuned, with the same architecture")
    names = []
    for n in model.keys():
        a, b = model.info(n), base.info(n)
        if tuple(a.shape) != tuple(b.shape):
            raise LoraMergeError(f"weight {n!r} is {tuple(a.shape)} in the model but {tuple(b.shape)} in the base; "
                                 "they are models of different sizes")
        if DTYPES[a.dtype].is_floating_point:
            names.append(n)
    if not names:
        raise LoraMergeError(f"{model.root}: no floating-point weights to extract")
    return names


def tau(model: WeightSet, base: WeightSet, name: str, device: torch.device) -> torch.Tensor:
    """τ for one weight in float32."""
    return model.get(name).to(device=device, dtype=torch.float32) - base.get(name).to(device=device, dtype=torch.float32)


def module_kinds(model_dir: Path, names: list[str]) -> dict[str, str]:
    """'linear' | 'embedding' | 'conv1d' per ``<module>.weight`` name, read from the architecture on the meta device.

    Falls back to names (embeddings by suffix, other 2-D weights as Linear) when
    transformers cannot build the architecture from config.json.
    """
    kinds: dict[str, str] = {}
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.pytorch_utils import Conv1D

        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(config)
        for mod_name, mod in net.named_modules():
            kind = ("conv1d" if isinstance(mod, Conv1D) else "embedding" if isinstance(mod, torch.nn.Embedding)
                    else "linear" if isinstance(mod, torch.nn.Linear) else None)
            if kind:
                kinds[f"{mod_name}.weight"] = kind
    except Exception:  # unknown architecture or no config: the name heuristic below
        kinds = {}
    if not kinds:
        kinds = {n: "embedding" if n.endswith(EMBEDDING_SUFFIXES) else "linear" for n in names}
    return {n: kinds[n] for n in names if n in kinds}


def truncated_factors(t: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B·A the best rank-``rank`` approximation of ``t``; the singular values split evenly."""
    u, s, vh = torch.linalg.svd(t, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _check_request(req: ExtractRequest) -> tuple[Path, torch.dtype, torch.device]:
    check_name(req.name, "--name")
    if req.rank is not None and req.rank < 1:
        raise LoraMergeError(f"--rank {req.rank}: give a positive rank, or leave it out for a dense pack")
    if req.dtype not in PACK_DTYPES:
        raise LoraMergeError(f"--dtype {req.dtype!r}: choose float32, bfloat16 or float16")
    if req.instances is not None and (type(req.instances) is not int or req.instances < 1):
        raise LoraMergeError(f"--instances {req.instances}: |D| is a positive count of training instances")
    out = Path(req.out) if req.out else Path(req.adapters_dir) / req.name
    check_output(out, req.force, [req.model, req.base], kind=PACK)
    return out, PACK_DTYPES[req.dtype], resolve_device(req.device)


def extract_pack(req: ExtractRequest) -> ExtractResult:
    """Write τ = θD − θpre as a dense skill pack, or as a rank-R LoRA pack when ``req.rank`` is set."""
    started = time.perf_counter()
    out, dtype, device = _check_request(req)
    model, base = WeightSet.open(req.model), WeightSet.open(req.base)
    names = paired_weights(model, base)
    instances = req.instances if req.instances is not None else general_size_from_folder(req.model)
    with staged_output(out, force=req.force, inputs=[req.model, req.base], kind=PACK) as tmp:
        if req.rank is None:
            result = _write_dense(req, model, base, names, tmp, dtype, device)
        else:
            result = _write_lora(req, model, base, names, tmp, dtype, device)
        sketch_pack(tmp, Path(req.base))  # θpre sampled where the pack touches it (pack/provenance.py)
        training = TrainingInfo(method="full", rank=req.rank, alpha=float(req.rank) if req.rank else None,
                                extracted_from=str(req.model), svd_relative_error=result.overall_error)
        write_manifest(tmp, Manifest(
            name=req.name, kind=result.kind,
            description=req.description or f"τ = θD − θpre extracted from {req.model}"
                                           + (f" (rank {req.rank} SVD)" if req.rank else ""),
            base_model=fingerprint_model(req.base, base), data=DataInfo(instances=instances), training=training,
        ))
    result.out, result.seconds = out, time.perf_counter() - started
    return result


def _write_dense(req, model, base, names, tmp, dtype, device) -> ExtractResult:
    plan = [PlannedTensor(n, dtype, tuple(model.info(n).shape)) for n in names]
    writer = ShardedWriter(tmp, plan, ONE_FILE, {"lora_merge": __version__, "content": "task_vector"})
    try:
        for p in console.bar(plan, desc="extract", unit="tensor", progress=req.progress):
            writer.write(p.name, tau(model, base, p.name, device).to(dtype).cpu())
        writer.finish()
    finally:
        writer.abort()
    (tmp / SINGLE_NAME).rename(tmp / DENSE_WEIGHTS)
    return ExtractResult(tmp, "dense", len(plan), writer.bytes_written, 0.0)


def _write_lora(req, model, base, names, tmp, dtype, device) -> ExtractResult:
    from peft import LoraConfig

    kinds = module_kinds(Path(req.model), [n for n in names if len(model.info(n).shape) == 2])
    present = set(kinds.values())
    if "conv1d" in present and "linear" in present:
        raise LoraMergeError("the model mixes Conv1D and Linear layers; a PEFT adapter has one fan_in_fan_out "
                             "setting for all of them, so extract a dense pack instead (leave out --rank)")
    fan_in_fan_out = "conv1d" in present
    plan, modules = [], []
    for n, kind in kinds.items():
        shape = tuple(model.info(n).shape)
        transposed = kind != "linear"  # PEFT stores Conv1D and Embedding deltas as (B·A)ᵀ
        rows, cols = (shape[1], shape[0]) if transposed else shape
        r = min(req.rank, rows, cols)
        module = n.removesuffix(".weight")
        ka, kb = (("lora_embedding_A", "lora_embedding_B") if kind == "embedding"
                  else ("lora_A.weight", "lora_B.weight"))
        key_a, key_b = f"{PEFT_PREFIX}{module}.{ka}", f"{PEFT_PREFIX}{module}.{kb}"
        plan += [PlannedTensor(key_a, dtype, (r, cols)), PlannedTensor(key_b, dtype, (rows, r))]
        modules.append((n, module, transposed, r, key_a, key_b))
    if not modules:
        raise LoraMergeError("the model has no Linear, Embedding or Conv1D weights a LoRA adapter could hold; "
                             "extract a dense pack instead (leave out --rank)")
    writer = ShardedWriter(tmp, plan, ONE_FILE, {"lora_merge": __version__, "content": "svd_lora"})
    errors = []
    try:
        for n, _module, transposed, r, key_a, key_b in console.bar(modules, desc="svd", unit="weight", progress=req.progress):
            t = tau(model, base, n, device)
            t = t.T if transposed else t
            b, a = truncated_factors(t, r)
            a, b = a.to(dtype), b.to(dtype)
            residual = torch.linalg.matrix_norm(t - b.float() @ a.float()).item()
            errors.append(WeightError(n, tuple(model.info(n).shape), r, torch.linalg.matrix_norm(t).item(), residual))
            writer.write(key_a, a.contiguous().cpu())
            writer.write(key_b, b.contiguous().cpu())
        writer.finish()
    finally:
        writer.abort()
    for n in names:  # what a LoRA adapter cannot carry is lost: report it in full
        if n not in kinds:
            norm = torch.linalg.vector_norm(tau(model, base, n, device)).item()
            errors.append(WeightError(n, tuple(model.info(n).shape), 0, norm, norm))
    (tmp / SINGLE_NAME).rename(tmp / ADAPTER_WEIGHTS)
    clamped = {re.escape(m): r for _n, m, _t, r, _a, _b in modules if r != req.rank}
    LoraConfig(
        r=req.rank, lora_alpha=req.rank, target_modules=[m for _n, m, *_ in modules], lora_dropout=0.0,
        fan_in_fan_out=fan_in_fan_out, rank_pattern=clamped, alpha_pattern=dict(clamped), bias="none",
        task_type="CAUSAL_LM", base_model_name_or_path=str(req.base), inference_mode=True,
    ).save_pretrained(tmp)
    return ExtractResult(tmp, "lora", len(modules), writer.bytes_written, 0.0, errors)
