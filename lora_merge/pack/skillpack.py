"""Skill packs: the self-describing folders people share and fold.

A pack is a folder with either a standard PEFT LoRA adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) or a dense
``task_vector.safetensors``, plus ``skill.json`` (the :class:`Manifest`) and a
generated ``README.md`` card. A plain PEFT adapter folder without
``skill.json`` is accepted too; its |D| is then unknown.

Loading validates the manifest and the adapter config, and verifies the
sha256 of every file that changes the fold's result (:data:`HASHED_FILES`:
the adapter config and the weights). Manifests of format 1 hashed the weights
only; they still load, with a warning that their config is not covered, and
``pack upgrade`` records the config's hash. Pack files are read through
:mod:`lora_merge.pack.files` (regular files inside the pack, JSON capped), and each is hashed from the bytes
that are used: the config as parsed, each safetensors file mapped once (:meth:`SkillPack.source`), so a file
swapped between the check and the read is never folded under the old file's hash.
Nothing in a pack is unpickled or executed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import mmap
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from lora_merge import __version__
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.output import replace_file
from lora_merge.io.fingerprint import Fingerprint
from lora_merge.io.tensors import PICKLE_SUFFIXES, SafetensorsFile, map_open_file, sha256_of
from lora_merge.pack.adapter_config import AdapterConfig, validate_adapter_config
from lora_merge.pack.files import check_pack_file, open_pack_file, parse_json, read_capped, read_json_capped
from lora_merge.rules.omega import OMEGA_LIMIT

MANIFEST_NAME = "skill.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DENSE_WEIGHTS = "task_vector.safetensors"
BASE_SKETCH = "base_sketch.safetensors"  # θpre sampled where the pack touches it (lora_merge/pack/provenance.py)
FORMAT_VERSION = 2  # 2: files covers adapter_config.json as well as the weights
KNOWN_FORMATS = (1, 2)
# Every pack file that changes what a fold computes or decides (skill.json itself is validated, README.md is
# generated). The sketch is optional: packs written before it existed verify and fold without one.
HASHED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, DENSE_WEIGHTS, BASE_SKETCH)
DEFAULT_REGISTRY = Path("adapters")


class DataInfo(BaseModel):
    """What the skill was trained on: |D| is what the ω = |D|/|G| rule uses."""

    model_config = ConfigDict(extra="forbid")
    # Strict: "100" or true is not a size. Bounds on ω = |D|/|G| are checked where ω is chosen (rules/omega.py).
    instances: StrictInt | None = Field(default=None, gt=0, description="|D|: training instances after filtering")
    tokens: StrictInt | None = Field(default=None, ge=0)
    sha256: str | None = None
    path: str | None = None


class QuantizationInfo(BaseModel):
    """The 4-bit base a QLoRA pack was trained against, as the loaded model used it (bitsandbytes quant state).

    ``residual_norms`` holds, per θpre weight the pack touches, ‖θpre − dequant(Q4(θpre))‖_F: the fold
    divides it by ‖ΔW‖ to warn where the quantisation error dwarfs the update (lora_merge/pack/quant_error.py).
    """

    model_config = ConfigDict(extra="allow")
    method: Literal["bitsandbytes"] = "bitsandbytes"
    bits: Literal[4] = 4
    quant_type: Literal["nf4", "fp4"]
    block_size: StrictInt = Field(gt=0, le=1 << 20)
    compute_dtype: Literal["float32", "bfloat16", "float16"]  # the dtype of the 4-bit layers' matmuls
    quant_dtype: Literal["float32", "bfloat16", "float16"]  # quantised from (and dequantised to) this dtype
    double_quant: bool  # the block absmax values quantised again (bnb "nested" state)
    residual_norms: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None


class TrainingInfo(BaseModel):
    """How the skill was trained (all optional: imported adapters may not know)."""

    model_config = ConfigDict(extra="allow")
    method: str | None = None  # lora | qlora | full
    strategy: str | None = None  # ptm | cft | rt
    quantization: str | None = None
    quantization_config: QuantizationInfo | None = None  # qlora: the 4-bit base, measured from the loaded model
    rank: int | None = None
    alpha: float | None = None
    lr: float | None = None
    epochs: float | None = None
    steps: int | None = None
    seed: int | None = None
    wall_seconds: float | None = None
    final_loss: float | None = None


class RecordedInterval(BaseModel):
    """One paired difference from θG at the recommended ω, as the sweep measured it (0–100 points)."""

    model_config = ConfigDict(extra="allow")
    group: str
    file: str | None = None  # None: the whole group
    metric: str | None = None
    n: StrictInt = Field(ge=0)
    delta: float = Field(allow_inf_nan=False)
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    method: str


class RecommendedWeight(BaseModel):
    """A sweep's ω (`sweep --write-recommendation`), the rule that chose it and what it rested on.

    skill.json is not hashed (it holds the hashes), so this value is bounded where it is read: never negative
    (a sweep's grid is 0 to ``OMEGA_LIMIT``; a negative ω subtracts the skill, which only ``--weights`` may ask
    for), at most ``OMEGA_LIMIT``; the fold warns when it is far from |D|/|G| (``rules.omega.recommended_warning``).
    A fold pins the ω it used in its resolved recipe, so a later edit here cannot change a rerun.
    """

    model_config = ConfigDict(extra="allow")
    value: float = Field(allow_inf_nan=False, le=OMEGA_LIMIT)  # weights.check_weight's bound (and ≥ 0, below)
    rule: str
    evidence: str | None = None
    tolerance: float | None = Field(default=None, allow_inf_nan=False, ge=0, le=100)  # points, 0–100 scale
    intervals: list[RecordedInterval] = Field(default_factory=list)

    @field_validator("value")
    @classmethod
    def _not_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"ω = {v:g} is negative; a sweep recommends ω from 0 to {OMEGA_LIMIT:g} (a negative ω "
                             "subtracts the skill, which is asked with --weights, never recommended); remove "
                             "recommended_weight from skill.json or run the sweep again")
        return v


class Manifest(BaseModel):
    """``skill.json``: everything needed to fold, reproduce and trust a pack."""

    model_config = ConfigDict(extra="forbid")
    format_version: Literal[KNOWN_FORMATS] = FORMAT_VERSION  # a newer format is refused, not misread
    name: str = Field(min_length=1)
    description: str = ""
    kind: Literal["lora", "dense"]
    base_model: Fingerprint = Field(default_factory=Fingerprint)
    data: DataInfo = Field(default_factory=DataInfo)
    training: TrainingInfo = Field(default_factory=TrainingInfo)
    recommended_weight: RecommendedWeight | None = None
    evaluation: dict[str, float] = {}
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file in HASHED_FILES")
    license: str | None = None
    tool_version: str = __version__
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _no_format_2_content_in_format_1(self) -> Manifest:
        """Format 1 predates hashing the config, the base sketch and the 4-bit settings: a format-1 manifest with
        any of them was edited down (a downgrade that would leave the config unchecked), never written so."""
        if self.format_version < 2:
            later = [f"files.{f}" for f in (ADAPTER_CONFIG, BASE_SKETCH) if f in self.files]
            later += ["training.quantization_config"] if self.training.quantization_config is not None else []
            if later:
                raise ValueError(f"format_version 1 with content only format 2 has ({', '.join(later)}): the "
                                 "manifest was edited down from format 2; re-fetch the pack")
        return self


def sha256_file(path: Path, pack: Path | None = None) -> str:
    """sha256 of a file; with ``pack``, only of a regular file inside that pack (see packfiles)."""
    h = hashlib.sha256()
    with (open_pack_file(path, pack) if pack is not None else open(path, "rb")) as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class SkillPack:
    """A loaded (and, by default, verified) skill pack."""

    def __init__(self, path: Path, manifest: Manifest | None, adapter_config: dict | None,
                 lora_config: AdapterConfig | None = None, config_bytes: bytes | None = None):
        self.path = path
        self.manifest = manifest
        self.adapter_config = adapter_config  # the JSON object as written (validated)
        self.lora_config = lora_config  # its fields the fold reads, checked
        self.warnings: list[str] = []
        # What was read is what is hashed: the config's bytes as parsed, each safetensors file mapped once.
        self._config_bytes = config_bytes
        self._maps: dict[str, mmap.mmap | bytes] = {}
        self._sources: dict[str, SafetensorsFile] = {}
        self._digests: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.path.name

    @property
    def kind(self) -> str:
        if self.manifest:
            return self.manifest.kind
        return "lora" if self.adapter_config is not None else "dense"

    @property
    def instances(self) -> int | None:
        """|D|, or None when unknown (a plain PEFT adapter)."""
        return self.manifest.data.instances if self.manifest else None

    @property
    def weights_file(self) -> Path:
        return self.path / (ADAPTER_WEIGHTS if self.kind == "lora" else DENSE_WEIGHTS)

    def has(self, fname: str) -> bool:
        return fname in self._maps or (fname == ADAPTER_CONFIG and self._config_bytes is not None) \
            or os.path.lexists(self.path / fname)

    def _mapped(self, fname: str) -> mmap.mmap | bytes:
        """``fname`` mapped once, opened as a pack file (regular, inside the pack): every later read and hash of
        it sees these bytes, even if the path is swapped for another file (`pack import --force` renames)."""
        if fname not in self._maps:
            with open_pack_file(self.path / fname, self.path) as f:
                self._maps[fname] = map_open_file(f)
        return self._maps[fname]

    def source(self, fname: str | None = None) -> SafetensorsFile:
        """A safetensors file of the pack (default: its weights) read from the very bytes :meth:`digest` hashes."""
        fname = fname or self.weights_file.name
        if fname not in self._sources:
            self._sources[fname] = SafetensorsFile(self.path / fname, self._mapped(fname))
        return self._sources[fname]

    def digest(self, fname: str) -> str:
        """sha256 of the pack file ``fname`` as this pack reads it (the config as parsed, a weight file as mapped)."""
        if fname not in self._digests:
            if fname == ADAPTER_CONFIG and self._config_bytes is not None:
                self._digests[fname] = hashlib.sha256(self._config_bytes).hexdigest()
            else:
                self._digests[fname] = sha256_of(self._mapped(fname))
        return self._digests[fname]

    def digests(self) -> dict[str, str]:
        """sha256 of every file of :data:`HASHED_FILES` the pack has, whatever its manifest covers (a recipe pins
        a format-1 pack's config too)."""
        return {f: self.digest(f) for f in HASHED_FILES if self.has(f)}

    def verify(self) -> list[tuple[str, bool, str]]:
        """Check each file of :data:`HASHED_FILES` against the manifest's sha256: (file, ok, detail) rows."""
        rows = []
        recorded = self.manifest.files if self.manifest else {}
        legacy = self.manifest is not None and self.manifest.format_version < 2
        for fname in HASHED_FILES:
            if not self.has(fname):
                if fname in recorded:
                    rows.append((fname, False, "recorded in the manifest but missing"))
                continue
            actual = self.digest(fname)
            if fname not in recorded:
                if self.manifest is None:
                    rows.append((fname, True, "no manifest"))
                elif legacy and fname == ADAPTER_CONFIG:
                    rows.append((fname, True, f"not covered by this format-1 manifest: {CONFIG_NOT_COVERED}"))
                else:
                    rows.append((fname, False, "no hash recorded"))
            elif recorded[fname] == actual:
                rows.append((fname, True, "sha256 ok"))
            else:
                rows.append((fname, False, f"sha256 mismatch: manifest {recorded[fname][:12]}…, file {actual[:12]}…"))
        return rows


CONFIG_NOT_COVERED = ("a change to adapter_config.json (alpha, rank) would go unnoticed; "
                      "run `cli.py pack upgrade NAME` to record its hash")


def load_manifest(path: Path) -> Manifest:
    raw = read_json_capped(path, "manifest", path.parent)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()[:5])
        raise LoraMergeError(f"{path}: invalid manifest: {problems}") from None


def load_adapter_config(path: Path) -> tuple[dict, AdapterConfig, bytes]:
    """adapter_config.json as written, as checked (LoraMergeError naming the field if it is malformed), and its
    bytes (hashed as they were parsed)."""
    data = read_capped(path, "adapter config", path.parent)
    raw = parse_json(data, path, "adapter config")
    return raw, validate_adapter_config(raw, path), data  # type: ignore[return-value]  # validated to be a dict


def _present(path: Path, fname: str) -> bool:
    """Whether the pack has ``fname``, refusing links out of the pack, devices and fifos."""
    f = path / fname
    if not os.path.lexists(f):
        return False
    check_pack_file(f, path)
    return True


def load_pack(path: str | os.PathLike, verify: bool = True) -> SkillPack:
    """Load a skill pack folder, validating its manifest and config and (unless told not to) its hashes."""
    path = Path(path)
    if not path.is_dir():
        raise LoraMergeError(f"{path}: no such skill pack folder")
    manifest = load_manifest(path / MANIFEST_NAME) if _present(path, MANIFEST_NAME) else None
    adapter_config, lora_config, config_bytes = (load_adapter_config(path / ADAPTER_CONFIG)
                                                 if _present(path, ADAPTER_CONFIG) else (None, None, None))
    has_adapter = _present(path, ADAPTER_WEIGHTS)
    has_dense = _present(path, DENSE_WEIGHTS)
    if not has_adapter and not has_dense:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise LoraMergeError(
                f"{path}: adapter weights are a pickle ({', '.join(pickles)}); lora_merge loads safetensors only and "
                "never unpickles. Re-save it with PEFT: model.save_pretrained(dir, safe_serialization=True)"
            )
        raise LoraMergeError(f"{path}: no {ADAPTER_WEIGHTS} or {DENSE_WEIGHTS}: not a skill pack")
    kind = manifest.kind if manifest else ("lora" if has_adapter else "dense")
    if kind == "lora" and (adapter_config is None or not has_adapter):
        missing = ADAPTER_CONFIG if adapter_config is None else ADAPTER_WEIGHTS
        raise LoraMergeError(f"{path}: LoRA pack is missing {missing}")
    if kind == "dense" and not has_dense:
        raise LoraMergeError(f"{path}: dense pack is missing {DENSE_WEIGHTS}")
    if manifest is not None and manifest.format_version < 2 and _present(path, BASE_SKETCH):
        raise LoraMergeError(f"{path}: a format-1 manifest beside {BASE_SKETCH}, which only format 2 has: the "
                             "manifest was edited down from format 2 (its config would go unchecked); re-fetch the pack")
    pack = SkillPack(path, manifest, adapter_config, lora_config, config_bytes)
    if manifest is not None and manifest.format_version < 2 and adapter_config is not None \
            and ADAPTER_CONFIG not in manifest.files:
        pack.warnings.append(f"pack {pack.name!r} has a format-1 manifest that does not cover adapter_config.json: "
                             + CONFIG_NOT_COVERED)
    if verify and manifest is not None:
        bad = [f"{f}: {detail}" for f, ok, detail in pack.verify() if not ok]
        if bad:
            raise LoraMergeError(
                f"{path}: pack failed verification ({'; '.join(bad)}). A file changed after the manifest was "
                "written, or the download is damaged. Re-fetch the pack, or pass --no-verify to fold it anyway."
            )
    return pack


def resolve_pack(name_or_path: str, registry: str | os.PathLike = DEFAULT_REGISTRY) -> Path:
    """A pack name resolves under the registry; an existing path is used as is."""
    direct = Path(name_or_path)
    if direct.is_dir() and ("/" in name_or_path or name_or_path.startswith(".") or not (Path(registry) / name_or_path).is_dir()):
        return direct
    candidate = Path(registry) / name_or_path
    if candidate.is_dir():
        return candidate
    known = sorted(p.name for p in Path(registry).iterdir() if p.is_dir()) if Path(registry).is_dir() else []
    hint = f" Known packs: {', '.join(known)}." if known else f" {registry}/ holds no packs."
    raise LoraMergeError(f"unknown skill pack {name_or_path!r}: no folder {candidate} and no path {direct}.{hint}")


def write_manifest(folder: Path, manifest: Manifest, *, rehash: bool = True) -> Manifest:
    """Write skill.json and README.md into ``folder``, each staged and renamed (``core.output.replace_file``: a
    link in their place is replaced, never written through, and a reader never sees half a manifest).

    With ``rehash`` (a pack being made) the files of
    :data:`HASHED_FILES` are hashed into the manifest, now of the current format. Without it the manifest's
    hashes and format are written as they are: a field changed in a pack that was just verified (a sweep's
    recommended ω) never blesses files changed since, nor turns a format-1 pack into format 2.
    A pack that already exists is rewritten only after `pack verify`'s checks (``sharing.check_pack``): by
    :func:`lora_merge.pack.rewrite.rewrite_manifests` (a field) or `pack upgrade` (the hashes of the very bytes
    it verified, written without ``rehash``).
    """
    from lora_merge.core.card import write_card

    if rehash:
        files = {f: sha256_file(folder / f, folder) for f in HASHED_FILES if os.path.lexists(folder / f)}
        manifest = manifest.model_copy(update={"files": files, "format_version": FORMAT_VERSION})
    replace_file(folder / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")
    write_card(folder, manifest)
    return manifest
