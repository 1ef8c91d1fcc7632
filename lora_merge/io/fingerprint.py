"""Fingerprints of model folders: what a pack's base was, checkable without the base.

A fingerprint records the architecture-defining config fields and a hash of
the sorted (tensor name, shape) list. Two models with the same fingerprint
have interchangeable weight layouts; ``family`` compares only what must agree
for a task vector to apply (architecture, shapes, vocabulary).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from lora_merge.io.tensors import WeightSet

# Config fields that fix the tensor layout (others, like dropout, do not matter).
ARCH_FIELDS = (
    "model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings",
    "n_embd", "n_layer", "n_head", "n_inner",
)


class Fingerprint(BaseModel):
    """Enough about a model to tell whether a task vector fits it."""

    name_or_path: str | None = None
    config: dict[str, object] = {}
    shapes_sha256: str | None = None
    num_parameters: int | None = None

    def same_family(self, other: "Fingerprint") -> bool:
        """Same architecture and tensor layout (a pack trained on one fits the other)."""
        if self.shapes_sha256 and other.shapes_sha256:
            return self.shapes_sha256 == other.shapes_sha256
        keys = set(self.config) & set(other.config)
        return all(self.config[k] == other.config[k] for k in keys)

    def differences(self, other: "Fingerprint") -> list[str]:
        """Human-readable list of config fields that differ."""
        out = []
        for k in sorted(set(self.config) | set(other.config)):
            if self.config.get(k) != other.config.get(k):
                out.append(f"{k}: {self.config.get(k)!r} vs {other.config.get(k)!r}")
        if self.shapes_sha256 != other.shapes_sha256 and not out:
            out.append("tensor names or shapes differ")
        return out


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def fingerprint_model(folder: str | Path, weights: WeightSet | None = None) -> Fingerprint:
    """Fingerprint a model folder from its config.json and safetensors headers (no tensor is read)."""
    folder = Path(folder)
    cfg = read_config(folder)
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    config = {k: (cfg.get(k) if k in cfg else text_cfg.get(k)) for k in ARCH_FIELDS if k in cfg or k in text_cfg}
    ws = weights or WeightSet.open(folder)
    items = sorted((name, list(ws.info(name).shape)) for name in ws.keys())
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()
    params = sum(ws.info(n).numel for n in ws.keys())
    return Fingerprint(name_or_path=str(folder), config=config, shapes_sha256=digest, num_parameters=params)


IDENTITY_SAMPLES = 16  # elements per tensor: another model or a retrained one differs in every one of them


def weights_identity(folder: str | Path, weights: WeightSet) -> str:
    """The identity of a model's weights, cheap for any size: sha256 over its config.json, every tensor's name,
    dtype and shape, and the raw bytes of :data:`IDENTITY_SAMPLES` elements of each at positions drawn from its
    name. A recipe pins θG (and θpre, θCFT) with it: another model, a retrained or re-saved one, a changed
    layout or config is caught; a single edited element outside the samples is not (a full hash reads the whole
    model, which the fold then reads again)."""
    h = hashlib.sha256()
    config = Path(folder) / "config.json"
    h.update(config.read_bytes() if config.is_file() else b"no config.json")
    for name in sorted(weights.keys()):
        info = weights.info(name)
        h.update(json.dumps([name, info.dtype, list(info.shape)]).encode())
        width = info.nbytes // max(info.numel, 1)
        data = weights.files[weights.where[name]].mapped()
        for i in range(min(IDENTITY_SAMPLES, info.numel)):
            at = int.from_bytes(hashlib.sha256(f"identity/{name}/{i}".encode()).digest()[:8], "little") % info.numel
            h.update(data[info.start + at * width:info.start + (at + 1) * width])
    return h.hexdigest()
