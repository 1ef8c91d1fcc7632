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
