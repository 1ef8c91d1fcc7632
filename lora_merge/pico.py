"""Pico models and packs built locally (tests, the walk-through, benchmarks): nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from lora_merge.io.fingerprint import Fingerprint, fingerprint_model
from lora_merge.pack.skillpack import DataInfo, Manifest, TrainingInfo, write_manifest

ARCHES = ("llama", "gpt2", "qwen2")


def pico_config(arch: str = "llama", hidden: int = 32, layers: int = 2, vocab: int = 128, tie: bool = False):
    """A transformers config for a tiny model of the given architecture."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if arch == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                           tie_word_embeddings=tie, max_position_embeddings=128)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                           tie_word_embeddings=tie, max_position_embeddings=128)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, vocab_size=vocab, n_positions=128,
                          tie_word_embeddings=True)
    raise ValueError(f"unknown pico architecture {arch!r}")


def pico_model(arch: str = "llama", seed: int = 0, **kw):
    """A randomly initialised tiny causal LM in float32, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(pico_config(arch, **kw))
    return model.eval()


def perturbed(model, seed: int, scale: float = 0.002):
    """A copy of ``model`` with every parameter nudged: a stand-in for θG tuned from θpre.

    The default nudge is a tenth of the pico weights' spread (initializer_range 0.02): θG stays as close to θpre
    as a tuned model does (relative distance ≈ 0.1, cosine ≈ 0.99; see lora_merge/pack/provenance.py). A scale of
    0.02 moves θG by its own size, as far as an unrelated model (still a descendant by its cosine, ≈ 0.7)."""
    import copy

    g = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return other


def save_model(model, folder: Path, **kw) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder, **kw)
    return folder


def randomize_lora(peft_model, seed: int, scale: float = 0.05) -> None:
    """Give every LoRA factor non-zero values (a fresh adapter has B = 0 and changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def make_lora_pack(
    base_model,
    base_dir: Path | None,
    out: Path,
    name: str,
    seed: int = 0,
    instances: int | None = 100,
    manifest: bool = True,
    **lora_kwargs,
) -> Path:
    """A real PEFT LoRA adapter with random non-zero factors, saved as a skill pack."""
    import copy

    from peft import LoraConfig, get_peft_model

    out = Path(out)
    lora_kwargs.setdefault("r", 4)
    lora_kwargs.setdefault("lora_alpha", 8)
    lora_kwargs.setdefault("target_modules", "all-linear")
    peft_model = get_peft_model(copy.deepcopy(base_model), LoraConfig(**lora_kwargs))
    randomize_lora(peft_model, seed)
    peft_model.save_pretrained(out)
    if manifest and base_dir:
        from lora_merge.core.errors import LoraMergeError
        from lora_merge.pack.provenance import sketch_pack

        try:
            sketch_pack(out, base_dir)  # as training does: θpre sampled where the pack touches it
        except LoraMergeError:
            pass  # a pack the fold refuses (DoRA) stays unsketched, so a test sees the fold's own refusal
    if manifest:
        write_manifest(out, Manifest(
            name=name, kind="lora", description=f"pico test skill {name}",
            base_model=fingerprint_model(base_dir) if base_dir else Fingerprint(),
            data=DataInfo(instances=instances), training=TrainingInfo(method="lora", strategy="ptm",
                                                                    rank=lora_kwargs["r"], alpha=lora_kwargs["lora_alpha"]),
        ))
    return out


def state_of(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved model folder, copied into memory (small models only)."""
    from lora_merge.io.tensors import WeightSet

    ws = WeightSet.open(folder)
    return {k: ws.get(k).clone() for k in ws.keys()}


def token_batch(vocab: int = 128, rows: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (rows, length), generator=g)


PICO_CHAR_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
    "{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def pico_char_tokenizer(folder: Path | None = None, chat_template: str | None = PICO_CHAR_CHAT_TEMPLATE):
    """A character-level tokenizer (printable ASCII + newline, < 128 ids) built locally, saved into ``folder``.

    It fits the pico models' vocabulary of 128; ``chat_template=None`` leaves it without a template, as a base
    model's tokenizer often is.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                  unk_token="<unk>")
    if chat_template is not None:
        tok.chat_template = chat_template
    if folder is not None:
        tok.save_pretrained(folder)
    return tok


# --- a tokenizer for pico models (issue 5: evaluation needs text in and out) -------------------------

PICO_SPECIAL = ("<pad>", "<unk>", "<eos>")
PICO_ROLES = ("<system>", "<user>", "<assistant>")
PICO_WORDS = (
    "the a an is are was be to of and or not no yes i you it we they this that what how why who where when "
    "can cannot can't do don't will won't sorry help answer question please sure here step first then "
    "kill python process bomb make build steal password code write function return print list sum two "
    "three four five one zero add plus minus equals true false science paper result cell protein safe "
    "unsafe harm people way stress enough useful with for in on at by from as if so but ? . , ' ! t"
).split()
PICO_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def pico_tokenizer(vocab_size: int = 128, words=PICO_WORDS, chat_template: bool = True):
    """A word-level fast tokenizer built locally: special and role tokens, ``words``, then fillers ``w0, w1…``.

    Ids fit a pico model's ``vocab_size``; text splits on whitespace and punctuation, unknown words map
    to ``<unk>``; ``<pad>`` is the pad token, ``<eos>`` the end of a turn. With ``chat_template`` a simple
    template renders ``<role> content`` turns (and ``<assistant>`` as the generation prompt).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fixed = list(PICO_SPECIAL) + list(PICO_ROLES) + [w for w in dict.fromkeys(words) if w not in PICO_SPECIAL]
    if len(fixed) > vocab_size:
        raise ValueError(f"pico_tokenizer: {len(fixed)} fixed tokens do not fit vocab_size {vocab_size}")
    vocab = {tok: i for i, tok in enumerate(fixed)}
    for i in range(vocab_size - len(fixed)):
        vocab[f"w{i}"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tok.add_special_tokens({"additional_special_tokens": list(PICO_ROLES)})
    if chat_template:
        tok.chat_template = PICO_CHAT_TEMPLATE
    return tok
