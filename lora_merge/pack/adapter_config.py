"""adapter_config.json of a LoRA pack: validated in one place, pattern keys matched in bounded time.

The fold reads a handful of PEFT's fields (``r``, ``lora_alpha``,
``use_rslora``, ``fan_in_fan_out``, ``rank_pattern``, ``alpha_pattern`` …).
:func:`validate_adapter_config` checks each of them strictly (no coercion: a
string ``r`` or a list ``lora_alpha`` is an error naming the field, ``r: 0``
never reaches a division) and leaves PEFT's other fields alone.

``rank_pattern`` / ``alpha_pattern`` keys are regular expressions in PEFT
(``peft.utils.other.get_pattern_key``: the first key for which
``re.match(rf"(.*\\.)?({key})$", module)`` matches wins). They are untrusted
input, so they are compiled with :mod:`re` (the syntax PEFT accepts) but
matched with the ``regex`` package under a timeout: a pathological key like
``(.|.|.)*z`` ends in a clear error instead of a fold that never finishes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from lora_merge.core.errors import LoraMergeError

if TYPE_CHECKING:
    import regex

MATCH_TIMEOUT_S = 0.5  # one pattern against one module path: real keys take microseconds
MAX_PATTERN_KEYS = 4096
MAX_PATTERN_CHARS = 512
# Module paths a pattern is tried on when the pack is loaded, so a key that explodes is refused by `pack verify`.
PROBE_MODULES = ("model.layers.0.self_attn.q_proj", "base_model.model.model.layers.31.mlp.down_proj.lora_A")


def _finite(v: float) -> float:
    try:
        ok = math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        ok = False
    if not ok or abs(v) > 1e12:
        raise ValueError("must be a finite number of sane size")
    return v


Rank = Annotated[StrictInt, Field(gt=0, le=1 << 20)]
Number = Annotated[StrictInt | StrictFloat, AfterValidator(_finite)]


class AdapterConfig(BaseModel):
    """The fields of PEFT's LoraConfig that change what a pack's delta is."""

    model_config = ConfigDict(extra="allow", strict=True)
    peft_type: StrictStr = "LORA"
    r: Rank = 8
    lora_alpha: Number = 8
    use_rslora: StrictBool | None = False
    use_dora: StrictBool | None = False
    fan_in_fan_out: StrictBool | None = False
    rank_pattern: dict[StrictStr, Rank] | None = None
    alpha_pattern: dict[StrictStr, Number] | None = None
    target_modules: StrictStr | list[StrictStr] | None = None
    modules_to_save: list[StrictStr] | None = None
    base_model_name_or_path: StrictStr | None = None
    bias: StrictStr = "none"  # "all" / "lora_only": θpre's biases trained and saved whole (replacements)


# Every field of PEFT 0.21's LoraConfig, by what it does to the delta scale·B·A the fold reads from a pack.
# Metadata, training-only settings and module selection (the saved keys say which modules): no effect.
NO_EFFECT = frozenset({
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
    "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "lora_dropout", "megatron_core",
    "qalora_group_size", "runtime_config", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
})
# Read by the fold, each held to PEFT's own merge (tests/test_fold_peft_oracle.py, tests/test_fold_lora_fields.py).
FOLDED = frozenset({
    "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "bias", "lora_bias",
    "modules_to_save", "init_lora_weights", "ensure_weight_tying",
})
# Set (anything but null, false or empty), these make the weights something other than a delta of θpre's shape.
REFUSED = {
    "use_dora": "DoRA's magnitude vector rescales each column, so the update is not B·A",
    "trainable_token_indices": "trainable tokens replace rows of the embedding, stored apart from the LoRA factors",
    "layer_replication": "layer replication stacks copies of θpre's layers, so the model is not θpre's shape",
    "target_parameters": "LoRA on bare parameters (target_parameters) is stored and merged apart from modules",
    "alora_invocation_tokens": "aLoRA applies the update only after its invocation tokens: it is not a weight delta "
                               "(PEFT cannot merge it either)",
    "use_qalora": "QALoRA's A acts on pooled input groups, not on the weight's input",
    "velora_config": "VeLoRA is not supported by the fold",
    "monteclora_config": "MonteCLoRA samples its update: it is not one weight delta",
    "use_bdlora": "block-diagonal LoRA (BD-LoRA) is not supported by the fold",
    "arrow_config": "Arrow routes between several adapters per token: it is not one weight delta",
    "kasa_config": "KaSA truncates θpre's smallest singular components and adds a learned diagonal between A and B",
    "megatron_config": "LoRA on Megatron's parallel layers is not supported by the fold",
}
# init_lora_weights values whose B·A is a delta from θpre: the base is left as it is at initialisation.
INIT_KEEPS_BASE = ("gaussian", "eva", "orthogonal", "mica")
# Values that rewrite θpre at initialisation (W ← W − scale·B₀A₀): an adapter saved as trained is a delta from that
# residual, not from θpre (PiSSA: "pissa" and "pissa_niter_K"; CorDA; OLoRA; LoftQ; LoRA-GA).
INIT_REWRITES_BASE = ("pissa", "corda", "olora", "loftq", "lora_ga")
CONVERT = ("save it converted to a plain LoRA adapter with PEFT: save the adapter as initialised (before training, "
           "init_lora_weights set to True) to INIT_DIR, and after training call "
           "model.save_pretrained(OUT, path_initial_model_for_weight_conversion=INIT_DIR); OUT is a rank-2r LoRA "
           "adapter (init_lora_weights: true) whose B·A is the delta from θpre")


def _set(value: object) -> bool:
    return value not in (None, False, "", [], {}, 0)


def check_foldable(cfg: AdapterConfig, where: Path | str) -> None:
    """Refuse, naming the field, an adapter whose weights are not a delta from θpre the fold can add: a LoRA
    variant, an initialisation that rewrote θpre, or a field this lora_merge does not know."""
    raw = cfg.model_dump()
    if cfg.peft_type != "LORA":
        raise LoraMergeError(f"{where}: peft_type {cfg.peft_type!r} is not LoRA; only LoRA adapters fold as task vectors")
    for name, why in REFUSED.items():
        if _set(raw.get(name)):
            raise LoraMergeError(f"{where}: {name} is set: {why}, so the pack cannot be folded as τ. Merge it into "
                                 "its base with PEFT's merge_and_unload and extract a dense pack with `cli.py "
                                 f"extract`, or retrain without {name}")
    _check_init(raw.get("init_lora_weights", True), where)
    unknown = sorted(k for k, v in raw.items() if k not in NO_EFFECT | FOLDED | REFUSED.keys() and _set(v))
    if unknown:
        raise LoraMergeError(f"{where}: {unknown[0]!r} is not a field of the LoRA config this lora_merge knows (PEFT "
                             "0.21's LoraConfig), so whether it changes the delta cannot be told; upgrade lora_merge, "
                             "or remove the field if it does not change the weights")


def _check_init(init: object, where: Path | str) -> None:
    if isinstance(init, bool) or init is None:
        return  # True (B = 0) and False (random A and B): θpre untouched, B·A is the delta
    text = str(init).lower()
    if text in INIT_KEEPS_BASE:
        return
    if text.startswith(INIT_REWRITES_BASE):
        fix = ("LoftQ replaces θpre by its quantised approximation, which PEFT cannot convert: merge it with "
               "merge_and_unload on that base and extract a dense pack with `cli.py extract`" if text == "loftq"
               else CONVERT)
        raise LoraMergeError(f"{where}: init_lora_weights {init!r} rewrites the base weights at initialisation, so "
                             "this adapter, saved as trained, is a delta from that rewritten base, not from θpre: "
                             f"folded as τ it would be wrong. {fix[0].upper()}{fix[1:]}")
    raise LoraMergeError(f"{where}: init_lora_weights {init!r} is not a value this lora_merge knows (true, false, "
                         f"{', '.join(INIT_KEEPS_BASE)}; refused: {', '.join(INIT_REWRITES_BASE)})")


def validate_adapter_config(raw: object, where: Path) -> AdapterConfig:
    """A checked :class:`AdapterConfig`, or a LoraMergeError naming the first bad fields."""
    if not isinstance(raw, dict):
        raise LoraMergeError(f"{where}: not a JSON object")
    try:
        cfg = AdapterConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'][:2])) or '(root)'}: {err['msg']}" for err in e.errors()[:4])
        raise LoraMergeError(f"{where}: invalid adapter config: {problems}") from None
    for field in ("rank_pattern", "alpha_pattern"):
        for key in _check_patterns(getattr(cfg, field) or {}, f"{where}: {field}"):
            for probe in PROBE_MODULES:
                match_key(key, probe, f"{where}: {field}")
    return cfg


def _check_patterns(patterns: Mapping[str, object], what: str) -> list[str]:
    if len(patterns) > MAX_PATTERN_KEYS:
        raise LoraMergeError(f"{what}: {len(patterns)} keys; at most {MAX_PATTERN_KEYS}")
    for key in patterns:
        if not key or len(key) > MAX_PATTERN_CHARS:
            raise LoraMergeError(f"{what}: key {key[:40]!r} must be 1 to {MAX_PATTERN_CHARS} characters")
        # only when a pack has pattern keys: start-up `pack inspect` need not pay (docs/benchmarks.md, "Start-up")
        import regex

        try:
            re.compile(rf"(.*\.)?({key})$")  # PEFT's syntax: what PEFT cannot compile is refused here too
            _compiled(key)
        except (re.error, regex.error, OverflowError, RecursionError, ValueError) as e:
            raise LoraMergeError(f"{what}: key {key!r} is not a valid regular expression ({e})") from None
    return list(patterns)


_CACHE: dict[str, regex.Pattern] = {}


def _compiled(key: str) -> regex.Pattern:
    rx = _CACHE.get(key)
    if rx is None:
        import regex

        rx = _CACHE[key] = regex.compile(rf"(.*\.)?({key})$")
    return rx


def match_key(key: str, module: str, what: str) -> bool:
    """PEFT's rule: ``key`` matches a module path ending in it at a dot boundary; bounded in time."""
    try:
        return _compiled(key).match(module, timeout=MATCH_TIMEOUT_S) is not None
    except TimeoutError:
        raise LoraMergeError(f"{what}: key {key!r} takes too long to match a module name (a pathological "
                             "regular expression); write it as a plain module name or a simple pattern") from None


def pattern_value(patterns: Mapping[str, object] | None, module: str, default: object, what: str) -> object:
    """The value of the first key matching ``module`` (PEFT's get_pattern_key), else ``default``."""
    for key, value in (patterns or {}).items():
        if match_key(key, module, what):
            return value
    return default
