"""On CPU, TRL's fused LM head scores only the completion positions and gives the loss of the full logits."""

from __future__ import annotations

import torch
from test_train import (
    PROMPTS,
    recipe,
    world,  # noqa: F401 (a fixture: θpre with a character tokenizer and a skill file)
)

from lora_merge.train.completion_logits import completion_positions_only


def _loss_and_grads(trainer, batch):
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_compact_head_equals_the_full_logits_loss_and_scores_fewer_rows(world, tmp_path, monkeypatch):  # noqa: F811
    from lora_merge.train.data import load_data, mix
    from lora_merge.train.run import build_trainer, hardware, plan_run

    rows = [{"prompt": p, "completion": c} for p, c in PROMPTS[:6]]
    r = recipe(world, tmp_path, data=rows)
    trainer = build_trainer(r, plan_run(r), mix({"skill": load_data(rows)}), hardware(r))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    labels = batch["labels"]
    assert (labels == -100).float().mean() > 0.5  # most positions are prompt or padding: the case this is for

    # the oracle: the model's own forward with full logits, cross-entropy over the labelled positions
    model = trainer.model
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    oracle = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    oracle.backward()
    oracle_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    import types

    import trl.trainer.utils as u

    scored = []  # how many positions each call of TRL's kernel scored
    kernel = u._ChunkedLogProbFunction
    monkeypatch.setattr(u, "_ChunkedLogProbFunction", types.SimpleNamespace(
        apply=lambda hidden, *a: scored.append(hidden.shape[0]) or kernel.apply(hidden, *a)))
    full_loss, full_grads = _loss_and_grads(trainer, batch)  # TRL's CPU path: every position scored
    with completion_positions_only(cuda=False) as applied:
        compact_loss, compact_grads = _loss_and_grads(trainer, batch)
    assert applied
    n_labelled = int((labels[:, 1:] != -100).sum())
    assert scored == [labels[:, 1:].numel(), n_labelled]  # the compact path scored the completion positions only
    for loss, grads in ((full_loss, full_grads), (compact_loss, compact_grads)):
        torch.testing.assert_close(loss, oracle.detach(), rtol=1e-5, atol=1e-6)
        assert grads.keys() == oracle_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, oracle_grads[name], rtol=1e-4, atol=1e-6)


def test_the_switch_is_restored_and_left_alone_on_cuda():
    import trl.trainer.utils as u

    before = u._use_triton
    with completion_positions_only(cuda=True) as applied:
        assert not applied and u._use_triton is before
    with completion_positions_only(cuda=False) as applied:
        assert applied and u._use_triton(torch.device("cpu"))
    assert u._use_triton is before and not u._use_triton(torch.device("cpu"))
