"""Score a causal LM on eval sets: batched greedy generation, log-likelihood choices, held-out loss.

:func:`evaluate_model` takes a model folder, or a model already in memory with its tokenizer (the sweep
and the miniature study call it many times on one loaded model). Prompts are rendered with the
tokenizer's chat template when it has one, padded on the left, and decoded greedily: for a given model,
data and batch size the results are the same on every run. Rows from all files are batched together,
longest first, so batches stay full and an out-of-memory error shows up on the first batch.

The metrics (see :mod:`lora_merge.evaluate.sets` for the row format):

* ``exact``: the normalised output equals a normalised answer. Normalisation is SQuAD-style: lower case,
  punctuation removed (except a decimal point between digits), articles a/an/the removed, whitespace
  collapsed.
* ``contains``: a normalised answer occurs in the normalised output as whole words ("4" is not in "14").
* ``choice``: the choice whose tokens get the highest summed log-probability after the prompt is the
  model's answer (lm-eval's ``acc``).
* ``refusal`` / ``compliance``: refused / answered by the rule of :mod:`lora_merge.evaluate.answered`: the
  refusal classifier (:mod:`lora_merge.evaluate.refusal`) finds a refusal / none, and the reply is not empty or
  degenerate (nor, for ``compliance``, a template: one reply given to several prompts of the set). Judged
  per eval set after generation; each sample says ``why`` it counted or not.
* ``loss``: mean token loss of the reference continuation (token-weighted over the file), its
  perplexity, and the score 100 / perplexity.

Every item goes to the report's samples with its outcome: ``correct`` (0/1 metrics) or, for ``loss``, the item's
mean token loss ``loss`` (nats per reference token) and its ``tokens``, so the token-weighted mean of the items'
``loss`` is the file's loss and 100·exp(−that) its score. Each sample also names the item: ``id`` and ``family``
as the row gives them, ``index`` (its 0-based position among the file's rows) and ``item_hash``
(:func:`lora_merge.evaluate.sets.item_hash`), which ``compare`` uses to pair two runs' items.
"""

from __future__ import annotations

import math
import os
import re
import string
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lora_merge.core import console
from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.answered import judge_replies
from lora_merge.evaluate.refusal import DEFAULT_CLASSIFIER, RefusalClassifier
from lora_merge.evaluate.report import EvalReport, MetricScore
from lora_merge.evaluate.sets import GENERATION_METRICS, EvalFile, EvalRow, item_hash, load_groups

_PUNCT = re.compile(rf"(?<!\d)[{re.escape(string.punctuation)}]|[{re.escape(string.punctuation)}](?!\d)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# --- metrics (pure) ----------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation used by ``exact`` and ``contains``."""
    text = text.lower().replace("\u2019", "'")
    text = _PUNCT.sub(" ", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def score_exact(output: str, answers: Sequence[str]) -> bool:
    out = normalize_answer(output)
    return any(out == normalize_answer(a) for a in answers)


def score_contains(output: str, answers: Sequence[str]) -> bool:
    out = f" {normalize_answer(output)} "
    return any(normalize_answer(a) and f" {normalize_answer(a)} " in out for a in answers)


def score_choice(logprobs: Sequence[float], correct: int) -> bool:
    """Right when the correct choice has the strictly highest log-likelihood (ties count as wrong)."""
    best = max(logprobs)
    return logprobs[correct] == best and sum(1 for lp in logprobs if lp == best) == 1


def score_generation(row: EvalRow, output: str, classifier: RefusalClassifier) -> bool:
    if row.metric == "exact":
        return score_exact(output, row.answers)
    if row.metric == "contains":
        return score_contains(output, row.answers)
    if row.metric in ("refusal", "compliance"):
        raise ValueError(f"{row.metric} items are judged per eval set (lora_merge.evaluate.answered.judge_replies)")
    raise ValueError(f"{row.metric} is not a generation metric")


# --- loading -----------------------------------------------------------------------------------------

def load_model(folder: str | os.PathLike, device: str = "cpu", dtype: str = "auto"):
    """(model, tokenizer) from a Hugging Face model folder, with clear errors for folders that are not one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise LoraMergeError(f"{folder}: no such model folder")
    if not (folder / "config.json").is_file():
        raise LoraMergeError(f"{folder}: not a model folder (no config.json); pass a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        raise LoraMergeError(f"{folder}: not a model folder (no *.safetensors weights); lora_merge loads safetensors only")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a missing tokenizer
        raise LoraMergeError(f"{folder}: no usable tokenizer ({type(e).__name__}: {str(e)[:200]}); "
                             "save the tokenizer into the model folder") from None
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, use_safetensors=True)
    except Exception as e:  # noqa: BLE001
        raise LoraMergeError(f"{folder}: cannot load the model ({type(e).__name__}: {str(e)[:200]})") from None
    return model.to(check_device(device)).eval(), tokenizer


def check_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoraMergeError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise LoraMergeError(f"--device {device!r}: use cpu or cuda")
    return torch.device(device)


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise LoraMergeError("the tokenizer has neither a pad nor an end-of-sequence token; batched evaluation needs one")


# --- prompts -----------------------------------------------------------------------------------------

def render(tokenizer, row: EvalRow, turns: Sequence[dict] | None = None) -> tuple[str, bool]:
    """(prompt text, whether the tokenizer should add its special tokens): chat template when there is one."""
    messages = list(turns) if turns is not None else (list(row.messages) if row.messages else None)
    if getattr(tokenizer, "chat_template", None):
        messages = messages or [{"role": "user", "content": row.prompt or ""}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, False
    if messages is None:
        return row.prompt or "", True
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:", True


def encode(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def context_limit(model, reserve: int) -> int | None:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return None if n is None else max(1, int(n) - reserve)


# --- model passes ------------------------------------------------------------------------------------

@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: Sequence[list[int]], batch_size: int, max_new_tokens: int,
                    progress: bool = False) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding; returned in input order."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=tokenizer.eos_token_id)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in console.bar(batches, desc="generate", unit="batch", progress=progress):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for r, i in enumerate(batch):
            out[i] = tokenizer.decode(gen[r, width:], skip_special_tokens=True).strip()
    return out


# Logit cells (rows × positions × vocabulary) scored at once: bounds the memory of the log-softmax over a large
# vocabulary, and past it a smaller batch is faster (docs/benchmarks.md, "Figures the code cites").
LOGIT_CELLS = 2**27


@torch.no_grad()
def continuation_logprobs(model, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int,
                          progress: bool = False) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each continuation given its context, batched (right padding);
    a batch is split further so that its logits stay within :data:`LOGIT_CELLS`."""
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 0) or 1)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    batches = []
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = len(pairs[batch[0]][0]) + len(pairs[batch[0]][1])  # the longest: sorted
        rows = max(1, min(len(batch), LOGIT_CELLS // max(1, width * vocab)))
        batches += [batch[i:i + rows] for i in range(0, len(batch), rows)]
    for batch in console.bar(batches, desc="score", unit="batch", progress=progress):
        seqs = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        token_lp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
        for r, i in enumerate(batch):
            ctx, cont = len(pairs[i][0]), len(pairs[i][1])
            out[i] = (float(token_lp[r, ctx - 1:ctx - 1 + cont].sum()), cont)
    return out


def loss_pair(tokenizer, row: EvalRow, limit: int | None) -> tuple[list[int], list[int]]:
    """(context ids, reference ids) of a loss row."""
    if row.text is not None:
        ids = encode(tokenizer, row.text, True)
        bos = tokenizer.bos_token_id
        ctx, cont = ([bos], ids[1:] if ids and ids[0] == bos else ids) if bos is not None else (ids[:1], ids[1:])
    else:
        turns = row.messages[:-1] if row.messages else None
        text, special = render(tokenizer, row, turns)
        reference = row.messages[-1]["content"] if row.messages else row.completion
        ctx, cont = encode(tokenizer, text, special), encode(tokenizer, reference, False)
    if limit is not None and len(ctx) + len(cont) > limit:
        cont = cont[: max(1, limit - 1)]
        ctx = ctx[-(limit - len(cont)):]
    return ctx, cont


# --- the evaluation ----------------------------------------------------------------------------------

def evaluate_model(
    model_or_dir: Any,
    eval_groups: Mapping[str, Sequence[Any]],
    *,
    tokenizer=None,
    batch_size: int = 8,
    device: str = "cpu",
    limit: int | None = None,
    max_new_tokens: int = 64,
    classifier: RefusalClassifier | None = None,
    progress: bool = False,
    name: str | None = None,
) -> EvalReport:
    """Score a model on groups of eval sets.

    ``model_or_dir`` is a model folder or a loaded causal LM (then pass ``tokenizer``); ``eval_groups`` maps
    a group name to jsonl paths, :class:`EvalFile` values or lists of row dicts; ``limit`` keeps the first
    rows of each file. Returns an :class:`EvalReport` (scores 0–100, higher is better).
    """
    started = time.perf_counter()
    if batch_size < 1 or max_new_tokens < 1 or (limit is not None and limit < 1):
        raise LoraMergeError("--batch-size, --max-new-tokens and --limit must be positive")
    groups = load_groups(dict(eval_groups))
    file_names_unique(groups)
    if isinstance(model_or_dir, (str, os.PathLike)):
        model, tokenizer = load_model(model_or_dir, device)
        name = name or str(model_or_dir)
    else:
        if tokenizer is None:
            raise LoraMergeError("evaluate_model on a loaded model needs its tokenizer (tokenizer=…)")
        model = model_or_dir.to(check_device(device)).eval()
        name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    classifier = classifier or DEFAULT_CLASSIFIER
    limit_ctx = context_limit(model, 0)

    items = [(g, f, i, row) for g, files in groups.items() for f in files for i, row in enumerate(f.rows[:limit])]
    gen_items = [it for it in items if it[3].metric in GENERATION_METRICS]
    prompt_limit = context_limit(model, max_new_tokens)
    prompts = []
    for *_, row in gen_items:
        ids = encode(tokenizer, *render(tokenizer, row))
        prompts.append(ids[-prompt_limit:] if prompt_limit else ids)
    outputs = generate_greedy(model, tokenizer, prompts, batch_size, max_new_tokens, progress)

    choice_items = [it for it in items if it[3].metric == "choice"]
    choice_pairs = []
    for *_, row in choice_items:
        ctx = encode(tokenizer, *render(tokenizer, row))
        choice_pairs += [(ctx, encode(tokenizer, c, False)) for c in row.choices]
    choice_lp = continuation_logprobs(model, choice_pairs, batch_size, progress)

    loss_items = [it for it in items if it[3].metric == "loss"]
    loss_lp = continuation_logprobs(model, [loss_pair(tokenizer, it[3], limit_ctx) for it in loss_items],
                                    batch_size, progress)

    per, samples = _outcomes(classifier, zip(gen_items, outputs, strict=True), choice_items, choice_lp,
                             zip(loss_items, loss_lp, strict=True))
    scores = metric_scores(per)
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "limit": limit, "device": str(device),
                "decoding": "greedy", "chat_template": bool(getattr(tokenizer, "chat_template", None))}
    return EvalReport(name, scores, samples, settings, time.perf_counter() - started)


def _sample(g: str, f: EvalFile, index: int, row: EvalRow) -> dict:
    """What names an item in samples.jsonl (see the module docstring)."""
    return {"group": g, "file": f.name, "id": row.id, "family": row.family, "index": index,
            "item_hash": item_hash(row), "metric": row.metric}


def _outcomes(classifier: RefusalClassifier, generated, choice_items, choice_lp, losses) -> tuple[dict, list[dict]]:
    """Each item's outcome: per (group, file, metric) for the scores, and one sample per item."""
    per: dict[tuple[str, str, str], list] = {}
    samples = []
    generated = list(generated)
    judged = judge_replies([((g, f.name), row) for (g, f, _, row), _ in generated], [out for _, out in generated],
                           classifier)  # refusal and compliance items, per eval set (lora_merge.evaluate.answered)
    for ((g, f, i, row), out), verdict in zip(generated, judged, strict=True):
        ok = score_generation(row, out, classifier) if verdict is None else verdict.ok
        per.setdefault((g, f.name, row.metric), []).append(ok)
        samples.append({**_sample(g, f, i, row),
                        "prompt": row.prompt if row.prompt is not None else list(row.messages or ()),
                        "output": out, "correct": ok, **({} if verdict is None else {"why": verdict.why})})
    k = 0
    for g, f, i, row in choice_items:
        lps = [lp for lp, _ in choice_lp[k:k + len(row.choices)]]
        k += len(row.choices)
        ok = score_choice(lps, row.correct)
        per.setdefault((g, f.name, "choice"), []).append(ok)
        samples.append({**_sample(g, f, i, row), "logprobs": lps, "answer": row.correct, "correct": ok})
    for (g, f, i, row), (lp, n) in losses:
        per.setdefault((g, f.name, "loss"), []).append((lp, n))
        samples.append({**_sample(g, f, i, row), "loss": -lp / max(n, 1), "tokens": n})
    return per, samples


def metric_scores(per: Mapping[tuple[str, str, str], list]) -> list[MetricScore]:
    """One score (0–100) per (group, file, metric): accuracy, or exp(−mean token loss) for ``loss``."""
    scores = []
    for (g, fname, metric), vals in per.items():
        if metric == "loss":
            total_lp, tokens = sum(v[0] for v in vals), sum(v[1] for v in vals)
            loss = -total_lp / max(tokens, 1)
            ppl = math.exp(loss) if loss < 700 else math.inf
            scores.append(MetricScore(g, fname, "loss", len(vals), 100.0 * math.exp(-loss), loss, ppl, tokens))
        else:
            scores.append(MetricScore(g, fname, metric, len(vals), 100.0 * sum(vals) / len(vals)))
    return scores


def file_names_unique(groups: Mapping[str, Sequence[EvalFile]]) -> None:
    """Two files of one group with the same stem would merge their rows in the tables: refuse that."""
    for g, files in groups.items():
        seen: set[str] = set()
        for f in files:
            if f.name in seen:
                raise LoraMergeError(f"eval group {g!r} has two files named {f.name!r}; rename one")
            seen.add(f.name)
