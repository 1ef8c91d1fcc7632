"""Shared fixtures: pico models and packs built locally, never downloaded."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: one torch thread each, not two
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def pico_dirs(tmp_path):
    """θpre and θG (θpre nudged) for a pico Llama, saved as safetensors folders."""
    from lora_merge.pico import perturbed, pico_model, save_model

    pre = pico_model("llama")
    gen = perturbed(pre, seed=1)
    return pre, gen, save_model(pre, tmp_path / "pre"), save_model(gen, tmp_path / "general")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """θpre, θG (θpre nudged) and one LoRA pack named `skill` (|D| = 100) for a pico Llama, once per module."""
    from types import SimpleNamespace

    from lora_merge.pico import make_lora_pack, perturbed, pico_model, save_model

    root = tmp_path_factory.mktemp("built")
    pre = pico_model("llama")
    pre_dir = save_model(pre, root / "pre")
    gen_dir = save_model(perturbed(pre, seed=1), root / "general")
    pack = make_lora_pack(pre, pre_dir, root / "src" / "skill", "skill", seed=3, instances=100)
    return SimpleNamespace(pre=pre, pre_dir=pre_dir, gen_dir=gen_dir, pack=pack)


@pytest.fixture
def reg(tmp_path, built):
    """A fresh adapters/ folder holding a copy of the `built` pack."""
    import shutil

    shutil.copytree(built.pack, tmp_path / "adapters" / "skill")
    return tmp_path / "adapters"
