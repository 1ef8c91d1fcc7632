"""Task vectors: τ = θD − θpre, one lazily computed tensor at a time.

A :class:`TaskVector` maps a model's weight names to :class:`Delta` terms.
Nothing is computed until :meth:`TaskVector.delta` asks for one tensor, so a
7B model's vector costs the adapter's size, not the model's. The algebra reads
like the paper::

    tau = TaskVector.from_pack(pack, target)      # τD
    folded = 0.24 * tau_safety + 0.57 * tau_coding  # what lora_merge.fold.write streams into θG

LoRA packs give ΔW = scale · B·A per adapted weight (scale = α/r, or α/√r with
rsLoRA, per-module ``rank_pattern``/``alpha_pattern``), transposed for GPT-2
style Conv1D weights and for embeddings. Whole tensors a pack replaces
(``modules_to_save``, trained biases) contribute saved − θpre and so need the
base model. Keys or shapes that do not fit the target model are errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from lora_merge.core.errors import LoraMergeError
from lora_merge.io.tensors import SafetensorsFile, WeightSet
from lora_merge.pack.adapter_config import AdapterConfig, check_foldable, pattern_value, validate_adapter_config
from lora_merge.pack.skillpack import SkillPack

PEFT_PREFIX = "base_model.model."
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
OUTPUT_SUFFIXES = ("lm_head.weight", "embed_out.weight")


class Delta:
    """One lazily computed contribution to one weight tensor (float32 when materialised)."""

    shape: tuple[int, ...]

    def materialize(self, device: str | torch.device = "cpu") -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class LowRankDelta(Delta):
    """ΔW = scale · B·A, transposed when ``transpose`` (Conv1D, embeddings)."""

    source: SafetensorsFile
    key_a: str
    key_b: str
    scale: float
    transpose: bool
    shape: tuple[int, ...]

    def factors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) in float32, with the scale folded into B."""
        a = self.source.get(self.key_a).to(device=device, dtype=torch.float32)
        b = self.source.get(self.key_b).to(device=device, dtype=torch.float32) * self.scale
        return b, a

    def materialize(self, device: str | torch.device = "cpu") -> torch.Tensor:
        b, a = self.factors(device)
        out = b @ a
        return out.T if self.transpose else out


@dataclass(frozen=True)
class StoredDelta(Delta):
    """A delta stored whole: a dense pack's τ, or a LoRA bias update (times ``scale``)."""

    source: SafetensorsFile
    key: str
    shape: tuple[int, ...]
    scale: float = 1.0

    def materialize(self, device: str | torch.device = "cpu") -> torch.Tensor:
        t = self.source.get(self.key).to(device=device, dtype=torch.float32)
        return t * self.scale if self.scale != 1.0 else t.clone()


@dataclass(frozen=True)
class ReplacementDelta(Delta):
    """A tensor the pack replaces whole (modules_to_save, trained biases): saved − θpre."""

    source: SafetensorsFile
    key: str
    base: WeightSet
    base_key: str
    shape: tuple[int, ...]

    def materialize(self, device: str | torch.device = "cpu") -> torch.Tensor:
        saved = self.source.get(self.key).to(device=device, dtype=torch.float32)
        return saved - self.base.get(self.base_key).to(device=device, dtype=torch.float32)


@dataclass
class TaskVector:
    """τ as a lazy sum of scaled deltas per weight name of the target model."""

    name: str
    terms: dict[str, list[tuple[float, Delta]]] = field(default_factory=dict)

    # --- algebra -------------------------------------------------------
    def __mul__(self, w: float) -> "TaskVector":
        if not isinstance(w, (int, float)):
            return NotImplemented
        return TaskVector(self.name, {k: [(c * w, d) for c, d in v] for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __neg__(self) -> "TaskVector":
        return self * -1.0

    def __add__(self, other: "TaskVector") -> "TaskVector":
        if not isinstance(other, TaskVector):
            return NotImplemented
        terms = {k: list(v) for k, v in self.terms.items()}
        for k, v in other.terms.items():
            terms.setdefault(k, []).extend(v)
        return TaskVector(f"{self.name}+{other.name}", terms)

    def __sub__(self, other: "TaskVector") -> "TaskVector":
        return self + (-other)

    # --- access --------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self.terms)

    def __contains__(self, name: object) -> bool:
        return name in self.terms

    def shape(self, name: str) -> tuple[int, ...]:
        return self.terms[name][0][1].shape

    def delta(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """The float32 delta for one weight: Σ coefficient · Δ."""
        out: torch.Tensor | None = None
        for coef, d in self.terms[name]:
            t = d.materialize(device)
            t = t * coef if coef != 1.0 else t
            out = t if out is None else out.add_(t)
        assert out is not None
        return out

    # --- construction --------------------------------------------------
    @classmethod
    def from_pack(
        cls,
        pack: SkillPack,
        target: "TargetModel",
        base: WeightSet | None = None,
    ) -> "TaskVector":
        """Bind a pack's weights to the target model's tensor names, checking every key and shape."""
        if pack.kind == "lora":
            return _from_lora(pack, target, base)
        return _from_dense(pack, target)


@dataclass
class TargetModel:
    """The names and shapes of the model a task vector is applied to.

    ``virtual`` names tensors the model uses but does not store: the output head
    of a model with tied embeddings reads the input embedding. A pack may address
    it; the fold then writes it out (untying the pair, which is what the adapted
    model computed).
    """

    shapes: dict[str, tuple[int, ...]]
    virtual: dict[str, str] = field(default_factory=dict)  # name → stored tensor it starts from
    tied: tuple[str, str] | None = None  # (input embedding, output head) when tied
    open_names: bool = False  # names come from the packs themselves (see :meth:`open`)

    @classmethod
    def open(cls) -> "TargetModel":
        """A target without a model: each adapter weight name is taken as is, and the first pack to name a
        weight fixes its shape, so packs bound to it must agree name for name (used to merge packs)."""
        return cls({}, open_names=True)

    @classmethod
    def from_weights(cls, ws: WeightSet, config: dict) -> "TargetModel":
        shapes = {n: ws.info(n).shape for n in ws.keys()}
        tied = tied_pair(shapes, config)
        virtual = {}
        if tied and tied[1] not in shapes:
            virtual[tied[1]] = tied[0]
            shapes[tied[1]] = shapes[tied[0]]
        return cls(shapes, virtual, tied)

    def resolve(self, module_weight: str) -> list[str]:
        """Model weight names for an adapter's ``<module path>.weight`` (prefix-insensitive)."""
        if module_weight in self.shapes or self.open_names:
            return [module_weight]
        hits = [n for n in self.shapes if n.endswith("." + module_weight) or module_weight.endswith("." + n)]
        if len(hits) > 1:
            raise LoraMergeError(f"adapter weight {module_weight!r} matches several model weights: {hits[:4]}")
        return hits


def tied_pair(shapes: Mapping[str, tuple[int, ...]], config: dict) -> tuple[str, str] | None:
    """(input embedding, output head) names when the config ties them."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", config.get("model_type") == "gpt2"))
    if not tie:
        return None
    embeds = [n for n in shapes if n.endswith(EMBEDDING_SUFFIXES)]
    if len(embeds) != 1:
        return None
    heads = [n for n in shapes if n.endswith(OUTPUT_SUFFIXES)]
    return embeds[0], heads[0] if heads else "lm_head.weight"


LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B)$")


def _check_lora_config(pack: SkillPack) -> AdapterConfig:
    where = pack.path / "adapter_config.json"
    cfg = pack.lora_config or validate_adapter_config(pack.adapter_config or {}, where)
    check_foldable(cfg, where)  # every LoraConfig field: folded exactly, or refused by name
    return cfg


def _from_lora(pack: SkillPack, target: TargetModel, base: WeightSet | None) -> TaskVector:
    cfg = _check_lora_config(pack)
    src = pack.source()  # the bytes verification hashed
    keys = src.keys()
    if any("lora_magnitude_vector" in k for k in keys):
        raise LoraMergeError(f"{pack.weights_file}: holds DoRA magnitude vectors; DoRA adapters cannot be folded as τ")
    groups: dict[str, dict[str, str]] = {}
    replacements: list[str] = []
    for key in keys:
        stripped = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = LORA_KEY.match(stripped)
        if m:
            groups.setdefault(m["module"], {})[m["part"]] = key
        elif ".base_layer." in stripped and not stripped.endswith(".base_layer.bias"):
            continue  # PEFT saves a copy of the untouched base embedding beside embedding LoRA; not a delta
        elif stripped.endswith((".weight", ".bias")):
            replacements.append(key)
        else:
            raise LoraMergeError(f"{pack.weights_file}: unrecognised adapter key {key!r}")

    tv = TaskVector(pack.name)
    where = f"{pack.path / 'adapter_config.json'}"
    for module, parts in groups.items():
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        ka, kb = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
        if ka not in parts or kb not in parts:
            raise LoraMergeError(f"{pack.weights_file}: module {module!r} has only one of its LoRA factors")
        a_shape, b_shape = src.tensors[parts[ka]].shape, src.tensors[parts[kb]].shape
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise LoraMergeError(f"{pack.weights_file}: {module}: LoRA factors A{a_shape} and B{b_shape} do not multiply")
        r = int(pattern_value(cfg.rank_pattern, module, cfg.r, f"{where}: rank_pattern"))  # validated > 0
        alpha = float(pattern_value(cfg.alpha_pattern, module, cfg.lora_alpha, f"{where}: alpha_pattern"))
        if r != a_shape[0]:
            raise LoraMergeError(f"{pack.weights_file}: {module}: rank {a_shape[0]} in the weights, {r} in adapter_config.json")
        scale = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
        transpose = embedding or bool(cfg.fan_in_fan_out)
        dense_shape = (b_shape[0], a_shape[1])
        shape = (dense_shape[1], dense_shape[0]) if transpose else dense_shape
        targets = _bind(target, module + ".weight", shape, pack, parts[kb])
        delta = LowRankDelta(src, parts[ka], parts[kb], scale, transpose, shape)
        for t in targets:
            tv.terms.setdefault(t, []).append((1.0, delta))
        if "lora_B.bias" in parts:
            bshape = src.tensors[parts["lora_B.bias"]].shape
            for t in _bind(target, module + ".bias", bshape, pack, parts["lora_B.bias"]):
                tv.terms.setdefault(t, []).append((1.0, StoredDelta(src, parts["lora_B.bias"], bshape, scale)))

    if replacements:
        if base is None:
            listed = ", ".join(k.removeprefix(PEFT_PREFIX) for k in replacements[:3])
            raise LoraMergeError(
                f"pack {pack.name!r} replaces whole tensors ({listed}{'…' if len(replacements) > 3 else ''}; "
                "modules_to_save or trained biases): their task vector is saved − θpre, so pass --base DIR "
                "with the pretrained model the pack was trained from"
            )
        for key in replacements:
            # bias "all" / "lora_only": an adapted module's trained bias is saved as MODULE.base_layer.bias
            stripped = key.removeprefix(PEFT_PREFIX).replace(".base_layer.bias", ".bias")
            shape = src.tensors[key].shape
            targets = _bind(target, stripped, shape, pack, key)
            base_key = _base_name(base, stripped, shape, pack, key)
            for t in targets:
                tv.terms.setdefault(t, []).append((1.0, ReplacementDelta(src, key, base, base_key, shape)))
    if not tv.terms:
        raise LoraMergeError(f"{pack.weights_file}: the adapter holds no LoRA weights")
    return tv


def _from_dense(pack: SkillPack, target: TargetModel) -> TaskVector:
    src = pack.source()
    tv = TaskVector(pack.name)
    for key in src.keys():
        shape = src.tensors[key].shape
        for t in _bind(target, key, shape, pack, key):
            tv.terms.setdefault(t, []).append((1.0, StoredDelta(src, key, shape)))
    if not tv.terms:
        raise LoraMergeError(f"{pack.weights_file}: the task vector holds no tensors")
    return tv


def _bind(target: TargetModel, weight_name: str, shape: tuple[int, ...], pack: SkillPack, key: str) -> list[str]:
    names = target.resolve(weight_name)
    if target.open_names:
        target.shapes.setdefault(weight_name, tuple(shape))
    if not names:
        raise LoraMergeError(
            f"pack {pack.name!r}: adapter key {key!r} matches no weight of the general model "
            f"(looked for {weight_name!r}); the pack was made for another architecture"
        )
    for n in names:
        if tuple(target.shapes[n]) != tuple(shape):
            raise LoraMergeError(
                f"pack {pack.name!r}: adapter key {key!r} gives a delta of shape {tuple(shape)} but model weight "
                f"{n!r} has shape {tuple(target.shapes[n])}; the pack was trained on a model of another size"
            )
    return names


def _base_name(base: WeightSet, name: str, shape: tuple[int, ...], pack: SkillPack, key: str) -> str:
    shapes = {n: base.info(n).shape for n in base.keys()}
    hits = TargetModel(shapes).resolve(name)
    if len(hits) != 1:
        raise LoraMergeError(f"pack {pack.name!r}: {key!r} has no counterpart {name!r} in the base model {base.root}")
    if tuple(shapes[hits[0]]) != tuple(shape):
        raise LoraMergeError(f"pack {pack.name!r}: {key!r} is {tuple(shape)} but base weight {hits[0]!r} is {tuple(shapes[hits[0]])}")
    return hits[0]

