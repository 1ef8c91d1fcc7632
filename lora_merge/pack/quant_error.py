"""QLoRA's quantisation error set against the update it learned: ‖θpre − dequant(Q4(θpre))‖ / ‖ΔW‖ per layer.

A QLoRA adapter learns ΔW against dequant(Q4(θpre)), not θpre; the fold adds it to a 16-bit model, where the
base differs from what training saw by the residual θpre − dequant(Q4(θpre)). Where that residual dwarfs ΔW
the adapter may have spent itself compensating for 4-bit noise that the 16-bit model does not have.

- Training records the 4-bit settings of the model it actually loaded (:func:`quantization_of_model`: quant
  type, block size, compute and storage dtype, double quantisation) and, per adapted weight, the residual's
  norm measured on that model's own 4-bit weights (:func:`recorded_residuals`), in skill.json.
- ``pack inspect --quantization-error BASE`` quantises BASE again with the pack's settings (NF4, block 64,
  double quantisation when the pack was not trained in 4 bits) and prints every layer's ratio
  (:func:`quantization_report`).
- The fold warns, naming the layers, where a QLoRA pack's ratio passes :data:`RATIO_WARN` (:func:`fold_warnings`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.printable import printable
from lora_merge.io.fingerprint import read_config
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.interference import terms_inner
from lora_merge.pack.skillpack import QuantizationInfo, SkillPack
from lora_merge.pack.task_vector import EMBEDDING_SUFFIXES, OUTPUT_SUFFIXES, PEFT_PREFIX, TargetModel, TaskVector

# Above this ratio the fold names the layer. Measured on SmolLM2-135M (docs/results.md, "QLoRA"): with ratios
# of 18–128 per layer (median 69) the QLoRA pack folded into the 16-bit θG scored within one item of the LoRA
# pack at ω = |D|/|G|, and correcting for the residual cost 20 general points. Above 200 lies outside what
# was measured: the update is then so small against the 4-bit noise that the fold says so.
RATIO_WARN = 200.0
DEFAULT_4BIT = QuantizationInfo(quant_type="nf4", block_size=64, compute_dtype="float32", quant_dtype="float32",
                                double_quant=True)  # what `train --mode qlora` loads on a CPU


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quantized_modules(model) -> dict[str, torch.nn.Module]:
    """θ's weight name → the 4-bit module holding it (bitsandbytes ``Linear4bit``), PEFT's wrapping removed."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if getattr(weight, "quant_state", None) is None:
            continue
        clean = name.removeprefix(PEFT_PREFIX).removesuffix(".base_layer")
        out[f"{clean}.weight"] = module
    return out


def quantization_of_model(model) -> QuantizationInfo | None:
    """The 4-bit settings a loaded model really uses (its first Linear4bit's quant state), or None."""
    modules = quantized_modules(model)
    if not modules:
        return None
    module = next(iter(modules.values()))
    state = module.weight.quant_state
    compute = getattr(module, "compute_dtype", None) or state.dtype
    return QuantizationInfo(quant_type=state.quant_type, block_size=int(state.blocksize),
                            compute_dtype=_dtype_name(compute), quant_dtype=_dtype_name(state.dtype),
                            double_quant=bool(state.nested))


def _norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.double()))


def recorded_residuals(model, base: WeightSet, names: list[str]) -> dict[str, float]:
    """‖θpre − dequant(W4)‖ for each of ``names`` the model holds in 4 bits, W4 being the model's own 4-bit
    weight: exactly the base the adapter was trained against."""
    import bitsandbytes.functional as bnbf

    modules = quantized_modules(model)
    out = {}
    for n in names:
        if n in modules and n in base:
            w = modules[n].weight
            dq = bnbf.dequantize_4bit(w.data, w.quant_state).float().cpu()
            out[n] = _norm(base.get(n).float().reshape(dq.shape) - dq)
    return out


def residual_norm(weight: torch.Tensor, q: QuantizationInfo) -> float:
    """‖W − dequant(Q4(W))‖ with the settings ``q`` (bitsandbytes, on whatever device W is on)."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise LoraMergeError("--quantization-error needs bitsandbytes: pip install 'lora_merge[qlora]'") from None
    w = weight.to(getattr(torch, q.quant_dtype))  # one of three float dtypes (the manifest's schema)
    try:
        packed, state = bnbf.quantize_4bit(w, blocksize=q.block_size, compress_statistics=q.double_quant,
                                           quant_type=q.quant_type)
    except (ValueError, RuntimeError, AssertionError) as e:  # a block size bitsandbytes does not support
        raise LoraMergeError(f"bitsandbytes cannot quantise with block size {q.block_size} ({e})") from None
    return _norm(weight.float() - bnbf.dequantize_4bit(packed, state).float())


def delta_norm(vector: TaskVector, name: str) -> float:
    """‖ΔW‖ of one weight, through the LoRA factors (r×r products, never the full matrix)."""
    return math.sqrt(max(terms_inner(vector.terms[name], vector.terms[name], "cpu"), 0.0))


@dataclass(frozen=True)
class LayerRatio:
    name: str
    residual: float  # ‖θpre − dequant(Q4(θpre))‖
    delta: float  # ‖ΔW‖ (ω = 1)

    @property
    def ratio(self) -> float:
        return self.residual / self.delta if self.delta > 0 else math.inf


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """The weights bitsandbytes holds in 4 bits: Linear matrices, not embeddings or the output head."""
    return len(shape) == 2 and not name.endswith(EMBEDDING_SUFFIXES + OUTPUT_SUFFIXES)


@dataclass
class QuantizationReport:
    settings: QuantizationInfo
    assumed: bool  # True when the pack was not trained in 4 bits and DEFAULT_4BIT stands in
    layers: list[LayerRatio]

    def summary(self) -> dict[str, float]:
        ratios = [r.ratio for r in self.layers if math.isfinite(r.ratio)]
        if not ratios:
            return {}
        return {"layers": len(self.layers), "median": statistics.median(ratios), "min": min(ratios),
                "max": max(ratios), "over_threshold": sum(r > RATIO_WARN for r in ratios), "threshold": RATIO_WARN}


def quantization_report(pack: SkillPack, base_dir: Path, device: str | torch.device = "cpu") -> QuantizationReport:
    """Every quantisable layer the pack adapts: θpre (``base_dir``) quantised again with the pack's settings."""
    if pack.kind != "lora":
        raise LoraMergeError(f"pack {printable(pack.name)!r} is dense: a QLoRA update is a LoRA pack")
    recorded = pack.manifest.training.quantization_config if pack.manifest else None
    settings = recorded or DEFAULT_4BIT
    base = WeightSet.open(base_dir)
    vector = TaskVector.from_pack(pack, TargetModel.from_weights(base, read_config(Path(base_dir))), base)
    layers = []
    for n in vector.keys():
        if n in base and _quantizable(n, vector.shape(n)):
            residual = residual_norm(base.get(n).to(device), settings)
            layers.append(LayerRatio(n, residual, delta_norm(vector, n)))
    return QuantizationReport(settings, recorded is None, layers)


def _match(name: str, keys: list[str]) -> str | None:
    """The vector key for a recorded θpre name (the same, or prefix-insensitive as adapter binding is)."""
    if name in keys:
        return name
    hits = [k for k in keys if k.endswith("." + name) or name.endswith("." + k)]
    return hits[0] if len(hits) == 1 else None


def fold_warnings(pack: SkillPack, vector: TaskVector) -> list[str]:
    """A warning naming the layers of a QLoRA pack whose recorded residual passes RATIO_WARN × ‖ΔW‖."""
    q = pack.manifest.training.quantization_config if pack.manifest else None
    if q is None or not q.residual_norms:
        return []
    keys = vector.keys()
    ratios = []
    for n, residual in q.residual_norms.items():
        key = _match(n, keys)
        if key is not None:
            ratios.append(LayerRatio(n, residual, delta_norm(vector, key)))
    big = sorted((r for r in ratios if not r.ratio <= RATIO_WARN), key=lambda r: -r.ratio)
    if not big:
        return []
    named = ", ".join(f"{printable(r.name)} {r.ratio:.3g}×" for r in big[:3])
    return [f"pack {printable(pack.name)!r} was trained on a 4-bit base ({q.quant_type}, block {q.block_size}): in "
            f"{len(big)}/{len(ratios)} layers ‖θpre − dequant(Q4(θpre))‖ is over {RATIO_WARN:g}× the update ‖ΔW‖ "
            f"({named}); the adapter learned against the 4-bit weights, so check the folded model "
            "(docs/results.md, QLoRA)"]
