"""The model record ``lora_merge.json``: one pydantic schema for every model folder lora_merge writes.

A merged model (role ``merged``) records the fold: the general model, the rule,
the formula and each folded pack with its ω and the rule that chose it. A
trained model (role ``general``, ``cft`` or ``rt``) records its lineage, data,
training settings and cost. ``data.instances`` is |G| (or |D| for a CFT model)
for the size rule ω = |D|/|G| of a later fold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

MODEL_RECORD = "lora_merge.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FoldedPackRecord(_Strict):
    """One folded term: a pack (or a model difference) with its ω and the rule that chose it."""

    name: str
    path: str
    kind: str
    weight: float
    rule: str
    weight_formula: str
    instances: int | None = None
    sha256: dict[str, str] = {}
    tensors: int
    base_check: str | None = None  # provenance (lora_merge/pack/provenance.py): descends | foreign-allowed | no-sketch
    base_distance: float | None = None  # ‖θG − θpre‖/‖θpre‖ at the pack's sketched positions (median over weights)
    base_cosine: float | None = None  # cos(θG, θpre) there (median over weights): ≥ 0.5 descends


class DataRecord(_Strict):
    instances: int | None = None
    tokens: int | None = None
    sources: dict[str, Any] | None = None


class Lineage(_Strict):
    start_model: str
    start_role: str | None = None
    start_fingerprint: dict[str, Any] | None = None
    base_model: str | None = None


class Cost(_Strict):
    instances: int
    steps: int
    tokens: int | None = None
    wall_seconds: float


class ModelRecord(_Strict):
    """``lora_merge.json``. Merged models fill the fold fields; trained models lineage, training and cost."""

    format_version: int = 1
    role: str  # merged | general | cft | rt
    tool_version: str
    data: DataRecord = DataRecord()
    name: str | None = None
    description: str | None = None
    # a merged model
    general_model: str | None = None
    base_model: str | None = None
    method: str | None = None
    density: float | None = None
    seed: int | None = None
    formula: str | None = None
    packs: list[FoldedPackRecord] | None = None
    warnings: list[str] | None = None
    license: str | None = None  # the general model's, from its card's front matter
    recipe: dict[str, Any] | None = None  # the resolved recipe (also lora_merge_recipe.yml)
    command: str | None = None  # the command that reruns the recipe
    # a trained model
    lineage: Lineage | None = None
    training: dict[str, Any] | None = None
    cost: Cost | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields this role uses (unset sections are left out), format_version first."""
        return {"format_version": self.format_version, **self.model_dump(mode="json", exclude_unset=True)}


def write_model_record(folder: Path, record: ModelRecord) -> dict[str, Any]:
    """Write ``lora_merge.json`` for ``record`` into ``folder`` (its card: :func:`lora_merge.core.card.write_card`)."""
    data = record.to_json()
    (Path(folder) / MODEL_RECORD).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data
