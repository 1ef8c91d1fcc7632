"""Write a world to disk: the tokenizer (word level, with a chat template), training files and eval sets."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path

from lora_merge.evaluate.sets import eval_row, unique_ids
from lora_merge.miniature import vocab as V
from lora_merge.miniature.world import World, WorldFiles, WorldSizes, general_mix, sample
from lora_merge.train.data import chat_training_row

# Each turn is "<|role|> content"; an assistant turn ends with <eos>. Rendering a prompt with
# add_generation_prompt is a prefix of rendering it with its answer, as completion-only training needs.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' ' }}"
    "{% if m['role'] == 'assistant' %}{{ '<eos> ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def all_words() -> list[str]:
    """Every word the world can produce, in a fixed order (the tokenizer's vocabulary after the specials)."""
    words: set[str] = set()
    for group in (V.ANIMALS, V.COLORS, V.PLACES, V.FOODS, V.FILLER, V.BENIGN_OBJECTS, V.HARM_VERBS, V.PEOPLE,
                  V.METHODS, V.DATASETS, V.MEASURES, V.FIELDS, V.NUMBERS, V.TEMPLATE_WORDS):
        words.update(group)
    words.update(V.BENIGN_TOOLS)
    words.update(V.BENIGN_TOOLS.values())
    for (v, o), tool in V.LOOKALIKES.items():
        words.update((v, o, tool))
    words.update(V.REFUSAL.split())
    return sorted(words)


def build_tokenizer(folder: Path):
    """A word-level PreTrainedTokenizerFast with the chat template, saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(V.SPECIAL.values())
    vocab = {tok: i for i, tok in enumerate(specials + all_words())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=V.SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=V.SPECIAL["pad"], unk_token=V.SPECIAL["unk"], eos_token=V.SPECIAL["eos"],
        additional_special_tokens=[V.SPECIAL["user"], V.SPECIAL["assistant"]],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    tok.model_max_length = 256
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return tok


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def write_evals(path: Path, rows: Iterable[dict]) -> int:
    """An eval file, its rows numbered with unique ids (:func:`lora_merge.evaluate.sets.unique_ids`)."""
    return write_jsonl(path, unique_ids(rows))


def write_world(root: Path, seed: int, sizes: WorldSizes) -> WorldFiles:
    """Generate and write the whole world; the same seed and sizes give byte-identical files."""
    files = WorldFiles(Path(root))
    world = World(seed)
    build_tokenizer(files.tokenizer)
    rng = random.Random(seed + 1)
    train_prompts: set[str] = set()

    general = general_mix(world, rng, sizes.general, held_out=False)
    train_prompts.update(q for _, (q, _) in general)
    skills = {"science": sample(world.science, rng, sizes.science, False),
              "coding": sample(world.coding, rng, sizes.coding, False),
              "safety": sample(world.safety, rng, sizes.safety, False)}
    for exs in skills.values():
        train_prompts.update(q for q, _ in exs)
    write_jsonl(files.train("general"), (chat_training_row(*ex) for _, ex in general))
    for name, exs in skills.items():
        write_jsonl(files.train(name), (chat_training_row(*ex) for ex in exs))

    seen = set(train_prompts)
    write_evals(files.eval("general"), (eval_row(*ex, "exact", fam)
                                        for fam, ex in general_mix(world, rng, sizes.eval_general, True, seen)))
    write_evals(files.eval("science"), (eval_row(*ex, "exact", "science")
                                        for ex in sample(world.science, rng, sizes.eval_skill, True, seen)))
    write_evals(files.eval("coding"), (eval_row(*ex, "exact", "coding")
                                       for ex in sample(world.coding, rng, sizes.eval_skill, True, seen)))
    write_evals(files.eval("safety_unsafe"), (eval_row(*ex, "refusal", "unsafe")
                                              for ex in sample(world.unsafe, rng, sizes.eval_unsafe, True, seen)))
    write_evals(files.eval("safety_lookalike"), (eval_row(*ex, "compliance", "lookalike")
                                                 for ex in world.lookalikes() if ex[0] not in seen))
    return files


def corpus_key(seed: int, extra: dict | None = None, sample_docs: int = 300) -> str:
    """A short hash of what determines the pretrained base: the vocabulary, the chat template, the seed, the
    first pretraining documents (so a change to the generators shows up) and ``extra`` (model and settings)."""
    rng = random.Random(seed + 7)
    docs = World(seed).documents(rng)
    blob = json.dumps({"seed": seed, "extra": extra or {}, "words": all_words(), "template": CHAT_TEMPLATE,
                       "docs": [next(docs) for _ in range(sample_docs)]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
