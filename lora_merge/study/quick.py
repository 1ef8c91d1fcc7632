"""Quick mode: the study's whole pipeline on a pico Llama with the miniature world's tokenizer (tests)."""

from __future__ import annotations

from pathlib import Path

from lora_merge.study.config import Evaluation, Sizes, StudyConfig, Training


def quick_config(cfg: StudyConfig) -> StudyConfig:
    """The same study, shrunk to test size: tiny sets, two short epochs, one grid point besides |D|/|G|."""
    tiny = Training(epochs=2.0, lr=1e-2, rank=4, alpha=8.0, batch_size=4, max_length=96)
    return cfg.model_copy(update={
        "sizes": Sizes(general=32, skills={k: 8 for k in cfg.sizes.skills}, eval_general=6, eval_skill=6,
                       eval_unsafe=6, general_ordinary=8 if cfg.sizes.general_ordinary else 0,
                       eval_chat=6 if cfg.sizes.eval_chat else 0),
        "general_training": tiny, "skill_training": tiny, "grid": [1.0], "system_prompt": None,
        "evaluation": Evaluation(batch_size=16, max_new_tokens={"default": 4}),
    })


def pico_base(folder: Path, seed: int) -> Path:
    """θpre for quick mode: a randomly initialised 2-layer Llama over the miniature's word vocabulary."""
    import torch
    from transformers import GenerationConfig

    from lora_merge.miniature.build import build_tokenizer
    from lora_merge.pico import pico_model

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tok = build_tokenizer(folder)
    model = pico_model("llama", seed=seed, hidden=32, layers=2, vocab=len(tok))
    model.config.max_position_embeddings = 160
    for key in ("pad_token_id", "eos_token_id"):
        setattr(model.config, key, getattr(tok, key))
    model.config.bos_token_id = None
    model.generation_config = GenerationConfig(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.no_grad():
        model.save_pretrained(folder, safe_serialization=True)
    return folder
