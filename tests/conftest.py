"""Shared fixtures: pico models and packs built locally, never downloaded."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


@pytest.fixture
def pico_dirs(tmp_path):
    """θpre and θG (θpre nudged) for a pico Llama, saved as safetensors folders."""
    from lora_merge.pico import perturbed, pico_model, save_model

    pre = pico_model("llama")
    gen = perturbed(pre, seed=1)
    return pre, gen, save_model(pre, tmp_path / "pre"), save_model(gen, tmp_path / "general")
