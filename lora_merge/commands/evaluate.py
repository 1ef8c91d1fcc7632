"""`eval`: score a model on eval sets (and, optionally, lm-evaluation-harness tasks)."""

from __future__ import annotations

from pathlib import Path

import click

from lora_merge.commands.options import MODEL, shared, split_names

EVAL_OPTIONS = [
    click.option("--evals", "evals", multiple=True, required=True,
                 help="GROUP=PATH[,PATH…] of jsonl eval sets; repeat for several groups (general=…, skill=…)."),
    click.option("--batch-size", type=int, default=8, show_default=True, help="Rows generated or scored at once."),
    shared("--device", extra="The model runs there."),
    click.option("--limit", type=int, default=None, help="Only the first N rows of each file (quick looks)."),
    click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Longest greedy answer, in tokens."),
    click.option("--refusal-phrases", type=click.Path(path_type=Path), default=None,
                 help="JSON/YAML file configuring the refusal classifier (see lora_merge/evaluate/refusal.py)."),
]


def eval_options(f):
    for opt in reversed(EVAL_OPTIONS):
        f = opt(f)
    return f


def classifier_from(path: Path | None):
    from lora_merge.evaluate.refusal import DEFAULT_CLASSIFIER, RefusalClassifier

    return RefusalClassifier.from_file(path) if path else DEFAULT_CLASSIFIER


@click.command("eval")
@click.option("--model", required=True, type=MODEL, help="Model folder (safetensors + tokenizer).")
@eval_options
@click.option("--lm-eval-tasks", default=None, help="lm-evaluation-harness tasks, comma separated (needs '.[eval]').")
@click.option("--lm-eval-include", type=click.Path(path_type=Path), default=None,
              help="Folder of local lm-eval task YAMLs (offline custom tasks).")
@click.option("--lm-eval-group", default="lm-eval", show_default=True, help="Group the lm-eval scores are filed under.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write scores.md/json/csv and samples here.")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
def eval_cmd(model, evals, batch_size, device, limit, max_new_tokens, refusal_phrases, lm_eval_tasks, lm_eval_include,
             lm_eval_group, out, force) -> None:
    """Score a model: greedy generation, log-likelihood choices and held-out loss, per file and group."""
    from lora_merge.core.output import check_output
    from lora_merge.core.output_kinds import EVAL_REPORT
    from lora_merge.evaluate.scoring import evaluate_model, load_model
    from lora_merge.evaluate.sets import parse_eval_option

    groups = parse_eval_option(evals)
    inputs = [model, refusal_phrases, lm_eval_include,
              *(p for paths in groups.values() for p in paths)]
    if out is not None:
        check_output(out, force, inputs, kind=EVAL_REPORT, origin="--out")
    classifier = classifier_from(refusal_phrases)
    loaded, tokenizer = load_model(model, device)
    report = evaluate_model(loaded, groups, tokenizer=tokenizer, batch_size=batch_size, device=device, limit=limit,
                            max_new_tokens=max_new_tokens, classifier=classifier, progress=True, name=str(model))
    if lm_eval_tasks:
        from lora_merge.evaluate.lm_eval_bridge import run_lm_eval

        report.scores += run_lm_eval(loaded, tokenizer, split_names(lm_eval_tasks), include_path=lm_eval_include,
                                     limit=limit, batch_size=batch_size, device=device, group=lm_eval_group)
    click.echo(report.markdown())
    if out is not None:
        report.write(out, force=force, inputs=inputs)
        click.echo(f"wrote {out}/scores.md, scores.json, scores.csv, samples.jsonl")
