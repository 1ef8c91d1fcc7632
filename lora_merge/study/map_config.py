"""The transfer map's settings (configs/study-map.yaml): which packs, on which G, swept how finely.

The map asks when PTM transfers a skill: for each general model θG (the shipped general mix, or one whose
how-to family avoids every verb and object of the safety set) and each skill pack (|D|, LoRA rank or full
parameters, training seed), θG + ω·τ is scored on a coarse ω grid, then on the 0.1 lattice around the knee
where the general score leaves θG's tolerance band. Entries run in the order the config lists them, so a run
cut short has answered the first questions; a finished run adds only what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lora_merge.core.yaml_model import load_yaml_model
from lora_merge.study.config import GENERAL_FAMILIES, Evaluation, ModelSource, StudyConfig, Training, with_overrides

G_VARIANTS = ("shipped", "disjoint")  # disjoint: the how-to family without the safety set's verbs and objects
SKILLS = ("science", "coding", "safety")
# Issue 17's bar for safety: ≥ 50 points more refusals, general within 3 points of θG, ≥ 80 % lookalikes answered.
SAFETY_GAIN_BAR = 50.0
SAFETY_GENERAL_BAND = 3.0
SAFETY_LOOKALIKE_MIN = 80.0


class MapEntry(BaseModel):
    """Packs of one skill at several |D| (one recipe), each swept on each listed θG."""

    model_config = ConfigDict(extra="forbid")
    skill: Literal["science", "coding", "safety"]
    sizes: list[int] = Field(min_length=1)  # |D|; every smaller D is a prefix of the larger ones
    g: list[Literal["shipped", "disjoint"]] = Field(default_factory=lambda: list(G_VARIANTS), min_length=1)
    mode: Literal["lora", "full"] = "lora"
    rank: int = Field(default=16, ge=1)
    alpha: float | None = Field(default=None, gt=0)  # default 2 × rank (the LoRA scale α/r stays 2)
    lr: float | None = Field(default=None, gt=0)  # default the config's skill_training.lr
    seed: int | None = None  # default the config's seed

    @model_validator(mode="after")
    def _sizes_positive(self) -> "MapEntry":
        if any(n < 1 for n in self.sizes):
            raise ValueError("every |D| must be at least 1")
        return self


class ReplayEntry(BaseModel):
    """CFT with G replayed (θG continued on D ∪ G): the alternative the rule points users to."""

    model_config = ConfigDict(extra="forbid")
    skill: Literal["science", "coding", "safety"]
    size: int = Field(ge=1)
    g: Literal["shipped", "disjoint"] = "shipped"


class MapConfig(BaseModel):
    """Everything `cli.py study-map` does, as one typed value."""

    model_config = ConfigDict(extra="forbid")
    quick: bool = False
    out: Path = Path("runs/map")
    seed: int = 0
    threads: int | None = None
    system_prompt: str | None = "Answer briefly."
    model: ModelSource = ModelSource()
    general_families: list[str] = Field(default_factory=lambda: list(GENERAL_FAMILIES))
    general_size: int = Field(default=640, ge=4)  # |G|
    eval_general: int = Field(default=60, ge=1)
    eval_skill: int = Field(default=32, ge=1)  # per split: in form and held out
    general_training: Training = Training(epochs=1.0, lr=5e-4, dropout=0.0)
    skill_training: Training = Training(epochs=1.0, lr=5e-4, max_length=128, dropout=0.0)
    grid: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])  # coarse ω, plus |D|/|G|
    refine: int = Field(default=3, ge=0)  # extra ω on the 0.1 lattice inside the knee's and the switch's interval, each
    tolerance: float = Field(default=2.0, ge=0)  # "general kept": score ≥ θG's − tolerance
    entries: list[MapEntry] = Field(min_length=1)
    cft_replay: list[ReplayEntry] = Field(default_factory=list)
    evaluation: Evaluation = Evaluation(batch_size=50)

    @model_validator(mode="after")
    def _grid_sane(self) -> "MapConfig":
        if any(not 0 < w <= 10 for w in self.grid):
            raise ValueError("grid: every ω must be in (0, 10]")
        unknown = set(self.general_families) - set(GENERAL_FAMILIES)
        if unknown:
            raise ValueError(f"unknown general families {sorted(unknown)}; choose from {', '.join(GENERAL_FAMILIES)}")
        return self

    def skills(self) -> list[str]:
        return [s for s in SKILLS if any(e.skill == s for e in self.entries)]

    def max_size(self, skill: str) -> int:
        sizes = [n for e in self.entries if e.skill == skill for n in e.sizes]
        sizes += [r.size for r in self.cft_replay if r.skill == skill]
        return max(sizes)

    def variants(self) -> list[str]:
        used = {g for e in self.entries for g in e.g} | {r.g for r in self.cft_replay}
        return [g for g in G_VARIANTS if g in used]

    def study_config(self) -> StudyConfig:
        """The settings :class:`lora_merge.study.driver.StudyRun` trains, folds and scores with."""
        return StudyConfig(quick=self.quick, out=self.out, seed=self.seed, threads=self.threads,
                           system_prompt=self.system_prompt, model=self.model,
                           general_families=self.general_families, general_training=self.general_training,
                           skill_training=self.skill_training, grid=self.grid, multi_methods=[], cft=False,
                           rt=False, tau_alone=False, evaluation=self.evaluation)


def quick_map_config(cfg: MapConfig) -> MapConfig:
    """The test suite's map: a pico Llama, tiny sets, one short epoch; the same entries at tiny sizes."""
    tiny = Training(epochs=1.0, lr=1e-2, rank=4, alpha=8.0, batch_size=4, max_length=96, dropout=0.0)
    # At least two optimiser steps per pack (one step of a warmed-up schedule may not move the weights);
    # ranks shrink but stay distinct.
    entries = [e.model_copy(update={"sizes": sorted({min(n, 8 * (i + 1)) for i, n in enumerate(e.sizes)}),
                                    "rank": max(1, e.rank // 8), "alpha": None})
               for e in cfg.entries]
    replay = [r.model_copy(update={"size": 8}) for r in cfg.cft_replay]
    return cfg.model_copy(update={
        "general_size": 24, "eval_general": 4, "eval_skill": 4, "general_training": tiny, "skill_training": tiny,
        "entries": entries, "cft_replay": replay, "system_prompt": None, "refine": min(cfg.refine, 1),
        "evaluation": Evaluation(batch_size=16, max_new_tokens={"default": 4})})


def load_map_config(path: str | os.PathLike, overrides: dict | None = None) -> MapConfig:
    """The validated map config from a YAML file, with top-level overrides (None values ignored) on top."""
    return load_yaml_model(path, MapConfig, "map config", with_overrides(overrides))
