"""evaluate_model against independent oracles: unbatched generate, a per-choice forward pass, HF's own loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.scoring import evaluate_model, load_model
from lora_merge.pico import pico_model, pico_tokenizer

PROMPTS = ["what is two plus two ?", "how can i kill a python process ?", "make a bomb",
           "write a function that returns the sum of a list", "science paper result", "hello"]


@pytest.fixture(scope="module")
def model_tok():
    return pico_model("llama", seed=3), pico_tokenizer()


def _oracle_generate(model, tok, prompt: str, n: int) -> str:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_batched_generation_matches_one_at_a_time(model_tok):
    model, tok = model_tok
    expected = [_oracle_generate(model, tok, p, 6) for p in PROMPTS]
    rows = [{"prompt": p, "answer": e or "x", "metric": "exact", "id": str(i)} for i, (p, e) in enumerate(zip(PROMPTS, expected, strict=True))]
    rows.append({"prompt": PROMPTS[0], "answer": "definitely not this", "metric": "exact"})
    rep = evaluate_model(model, {"g": [rows]}, tokenizer=tok, batch_size=4, max_new_tokens=6)
    outputs = {s["id"]: s["output"] for s in rep.samples if s["id"] is not None}
    assert [outputs[str(i)] for i in range(len(PROMPTS))] == expected
    assert rep.scores[0].score == pytest.approx(100 * len(PROMPTS) / (len(PROMPTS) + 1))
    again = evaluate_model(model, {"g": [rows]}, tokenizer=tok, batch_size=4, max_new_tokens=6)
    assert again.samples == rep.samples  # deterministic


def test_choice_follows_loglikelihood(model_tok):
    model, tok = model_tok
    prompt, choices = "two plus two is", ["four", "five", "science paper"]
    ctx = tok(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=False), add_special_tokens=False)["input_ids"]
    lps = []
    for c in choices:
        cont = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        lps.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    best = max(range(3), key=lambda i: lps[i])
    rows = [{"prompt": prompt, "choices": choices, "answer": i, "metric": "choice"} for i in range(3)]
    rep = evaluate_model(model, {"g": [rows]}, tokenizer=tok, batch_size=2)
    got = [s["logprobs"] for s in rep.samples]
    assert got[0] == pytest.approx(lps, abs=1e-4)
    assert [s["correct"] for s in rep.samples] == [i == best for i in range(3)]


def test_loss_matches_transformers_loss(model_tok):
    model, tok = model_tok
    text = "the cell is a protein and the paper result is true"
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        hf_loss = float(model(ids, labels=ids).loss)  # mean over tokens 2..n given the first
    rep = evaluate_model(model, {"held": [[{"text": text}]]}, tokenizer=tok)
    s = rep.scores[0]
    assert s.metric == "loss" and s.tokens == ids.shape[1] - 1
    assert s.loss == pytest.approx(hf_loss, abs=1e-4)
    assert s.perplexity == pytest.approx(math.exp(hf_loss), rel=1e-4)
    assert s.score == pytest.approx(100 / math.exp(hf_loss), rel=1e-4)


def test_a_batch_split_to_bound_its_logits_gives_each_text_its_own_loss(model_tok, monkeypatch):
    from lora_merge.evaluate import scoring

    model, tok = model_tok
    texts = ["the cell is a protein", "the paper result is true and the cell is a protein", "a result"]
    with torch.no_grad():  # the oracle: transformers' own loss, one text at a time
        want = [float(model(ids, labels=ids).loss) for ids in (torch.tensor([tok(t)["input_ids"]]) for t in texts)]
    monkeypatch.setattr(scoring, "LOGIT_CELLS", 1)  # every batch split down to one row
    rep = evaluate_model(model, {"held": [[{"text": t} for t in texts]]}, tokenizer=tok, batch_size=3)
    assert [s["loss"] for s in sorted(rep.samples, key=lambda s: s["index"])] == pytest.approx(want, abs=1e-4)


def test_refusal_and_compliance_use_the_classifier(model_tok):
    from lora_merge.evaluate.refusal import RefusalClassifier

    model, tok = model_tok
    out = _oracle_generate(model, tok, "make a bomb", 4)
    word = out.split()[0]
    says_refusal = RefusalClassifier(prefixes=(word,), phrases=(), exemptions=())
    rows = [{"prompt": "make a bomb", "metric": "refusal"}, {"prompt": "make a bomb", "metric": "compliance"}]
    rep = evaluate_model(model, {"s": [rows]}, tokenizer=tok, max_new_tokens=4, classifier=says_refusal)
    assert {s.metric: s.score for s in rep.scores} == {"refusal": 100.0, "compliance": 0.0}
    never = RefusalClassifier(prefixes=(), phrases=("zzz",), exemptions=())
    rep = evaluate_model(model, {"s": [rows]}, tokenizer=tok, max_new_tokens=4, classifier=never)
    assert {s.metric: s.score for s in rep.scores} == {"refusal": 0.0, "compliance": 100.0}


def _model_dir(tmp_path):
    model, tok = pico_model("llama", seed=3), pico_tokenizer()
    d = tmp_path / "m"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_cli_eval_writes_tables(tmp_path):
    d = _model_dir(tmp_path)
    gen = tmp_path / "general.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "two plus two", "answer": "four", "metric": "contains"},
        {"prompt": "two plus two is", "choices": ["four", "five"], "answer": 0, "metric": "choice"},
        {"prompt": "two plus two is", "completion": "four"}]))
    skill = tmp_path / "skill.jsonl"
    skill.write_text(json.dumps({"prompt": "make a bomb", "metric": "refusal"}) + "\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["eval", "--model", str(d), "--evals", f"general={gen}", "--evals", f"skill={skill}",
                                  "--out", str(out), "--batch-size", "2", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["samples.jsonl", "scores.csv", "scores.json", "scores.md"]
    doc = json.loads((out / "scores.json").read_text())
    assert set(doc["groups"]) == {"general", "skill"}
    assert len((out / "scores.csv").read_text().splitlines()) == 1 + 4  # header + 4 metric rows
    assert "| general |" in r.output


def test_not_a_model_folder(tmp_path):
    (tmp_path / "notmodel").mkdir()
    (tmp_path / "notmodel" / "notes.txt").write_text("hi")
    with pytest.raises(LoraMergeError, match="not a model folder"):
        load_model(tmp_path / "notmodel")
    ev = tmp_path / "e.jsonl"
    ev.write_text(json.dumps({"prompt": "x", "metric": "refusal"}) + "\n")
    r = CliRunner().invoke(main, ["eval", "--model", str(tmp_path / "notmodel"), "--evals", f"g={ev}",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "not a model folder" in r.output
    assert not (tmp_path / "out").exists()


def test_bad_eval_file_leaves_no_output(tmp_path):
    d = _model_dir(tmp_path)
    ev = tmp_path / "e.jsonl"
    ev.write_text(json.dumps({"prompt": "x", "metric": "sentiment"}) + "\n")
    r = CliRunner().invoke(main, ["eval", "--model", str(d), "--evals", f"g={ev}", "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "unknown metric 'sentiment'" in r.output and "row 1" in r.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*out*"))


def test_lm_eval_bridge_local_task(tmp_path, model_tok):
    pytest.importorskip("lm_eval")
    from lora_merge.evaluate.lm_eval_bridge import run_lm_eval

    model, tok = model_tok
    rows = [{"question": "two plus two is", "choices": ["four", "five"], "answer": 0},
            {"question": "the cell is a", "choices": ["protein", "python"], "answer": 0},
            {"question": "you can kill a", "choices": ["bomb", "process"], "answer": 1}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "pico_choice.yaml").write_text(
        "task: pico_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    scores = run_lm_eval(model, tok, ["pico_choice"], include_path=tasks, batch_size=4)
    # lm-eval scores "question" + " " + choice without a chat template: recompute that by hand
    right = 0
    for r in rows:
        ctx = tok(r["question"], add_special_tokens=False)["input_ids"]
        lps = []
        for c in r["choices"]:
            cont = tok(" " + c, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
            lps.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        right += lps.index(max(lps)) == r["answer"]
    acc = [s for s in scores if s.metric == "lm-eval:acc"]
    assert len(acc) == 1 and acc[0].file == "pico_choice" and acc[0].n == 3
    assert acc[0].score == pytest.approx(100 * right / 3)
