"""Skill packs: the self-describing folders people share and fold.

A pack is a folder with either a standard PEFT LoRA adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) or a dense
``task_vector.safetensors``, plus ``skill.json`` (the :class:`Manifest`) and a
generated ``README.md`` card. A plain PEFT adapter folder without
``skill.json`` is accepted too; its |D| is then unknown.

Loading validates the manifest and verifies the sha256 of every weight file.
Nothing in a pack is unpickled or executed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lora_merge import __version__
from lora_merge.errors import LoraMergeError
from lora_merge.fingerprint import Fingerprint
from lora_merge.tensors import PICKLE_SUFFIXES

MANIFEST_NAME = "skill.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DENSE_WEIGHTS = "task_vector.safetensors"
FORMAT_VERSION = 1
DEFAULT_REGISTRY = Path("adapters")


class DataInfo(BaseModel):
    """What the skill was trained on: |D| is what the ω = |D|/|G| rule uses."""

    model_config = ConfigDict(extra="forbid")
    instances: int | None = Field(default=None, ge=0, description="|D|: training instances after filtering")
    tokens: int | None = Field(default=None, ge=0)
    sha256: str | None = None
    path: str | None = None


class TrainingInfo(BaseModel):
    """How the skill was trained (all optional: imported adapters may not know)."""

    model_config = ConfigDict(extra="allow")
    method: str | None = None  # lora | qlora | full
    strategy: str | None = None  # ptm | cft | rt
    quantization: str | None = None
    rank: int | None = None
    alpha: float | None = None
    lr: float | None = None
    epochs: float | None = None
    steps: int | None = None
    seed: int | None = None
    wall_seconds: float | None = None
    final_loss: float | None = None


class RecommendedWeight(BaseModel):
    model_config = ConfigDict(extra="allow")
    value: float
    rule: str
    evidence: str | None = None


class Manifest(BaseModel):
    """``skill.json``: everything needed to fold, reproduce and trust a pack."""

    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1)
    description: str = ""
    kind: Literal["lora", "dense"]
    base_model: Fingerprint = Field(default_factory=Fingerprint)
    data: DataInfo = Field(default_factory=DataInfo)
    training: TrainingInfo = Field(default_factory=TrainingInfo)
    recommended_weight: RecommendedWeight | None = None
    evaluation: dict[str, float] = {}
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every weight file")
    license: str | None = None
    tool_version: str = __version__
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class SkillPack:
    """A loaded (and, by default, verified) skill pack."""

    def __init__(self, path: Path, manifest: Manifest | None, adapter_config: dict | None):
        self.path = path
        self.manifest = manifest
        self.adapter_config = adapter_config

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

    def verify(self) -> list[tuple[str, bool, str]]:
        """Check each weight file against the manifest's sha256: (file, ok, detail) rows."""
        rows = []
        recorded = self.manifest.files if self.manifest else {}
        for fname in [ADAPTER_WEIGHTS, DENSE_WEIGHTS]:
            f = self.path / fname
            if not f.exists():
                continue
            actual = sha256_file(f)
            if fname not in recorded:
                rows.append((fname, self.manifest is None, "no hash recorded" if self.manifest else "no manifest"))
            elif recorded[fname] == actual:
                rows.append((fname, True, "sha256 ok"))
            else:
                rows.append((fname, False, f"sha256 mismatch: manifest {recorded[fname][:12]}…, file {actual[:12]}…"))
        return rows


def load_manifest(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise LoraMergeError(f"{path}: cannot read manifest ({e})") from None
    except json.JSONDecodeError as e:
        raise LoraMergeError(f"{path}: manifest is not valid JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise LoraMergeError(f"{path}: manifest nests too deeply to be a skill.json") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()[:5])
        raise LoraMergeError(f"{path}: invalid manifest: {problems}") from None


def load_pack(path: str | os.PathLike, verify: bool = True) -> SkillPack:
    """Load a skill pack folder, validating its manifest and (unless told not to) its hashes."""
    path = Path(path)
    if not path.is_dir():
        raise LoraMergeError(f"{path}: no such skill pack folder")
    manifest = load_manifest(path / MANIFEST_NAME) if (path / MANIFEST_NAME).exists() else None
    adapter_config = None
    if (path / ADAPTER_CONFIG).exists():
        try:
            adapter_config = json.loads((path / ADAPTER_CONFIG).read_text())
            assert isinstance(adapter_config, dict)
        except (ValueError, AssertionError, RecursionError):
            raise LoraMergeError(f"{path / ADAPTER_CONFIG}: not a valid JSON object") from None
    has_adapter = (path / ADAPTER_WEIGHTS).exists()
    has_dense = (path / DENSE_WEIGHTS).exists()
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
    pack = SkillPack(path, manifest, adapter_config)
    if verify and manifest is not None:
        bad = [f"{f}: {detail}" for f, ok, detail in pack.verify() if not ok]
        if bad:
            raise LoraMergeError(
                f"{path}: pack failed verification ({'; '.join(bad)}). The weights changed after the manifest was "
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


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Hash the weight files in ``folder``, store the hashes in the manifest, write skill.json and README.md."""
    files = {f: sha256_file(folder / f) for f in (ADAPTER_WEIGHTS, DENSE_WEIGHTS) if (folder / f).exists()}
    manifest = manifest.model_copy(update={"files": files})
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    from lora_merge.card import write_card

    write_card(folder, manifest)
    return manifest
