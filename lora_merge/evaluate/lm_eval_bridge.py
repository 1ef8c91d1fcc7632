"""Standard benchmarks through lm-evaluation-harness (optional: ``pip install '.[eval]'``).

:func:`run_lm_eval` runs lm-eval tasks on a model already loaded in memory (through lm-eval's ``HFLM``
wrapper and its Python API, ``simple_evaluate``) and returns the scores as :class:`MetricScore` rows, so
they sit in the same tables as lora_merge's own eval sets. Metrics on a 0–1 scale (acc, acc_norm,
exact_match, …) are reported ×100; others (perplexities, BLEU on its own scale) are left out of the
table because they do not share the 0–100 higher-is-better scale.

Named tasks such as ``mmlu`` or ``gsm8k`` download their data through ``datasets`` on first use. For
offline use, point ``include_path`` at a folder of task YAMLs over local files, e.g.::

    task: my_choice
    dataset_path: json
    dataset_kwargs: {data_files: {test: /data/my_choice.jsonl}}
    test_split: test
    output_type: multiple_choice
    doc_to_text: "{{question}}"
    doc_to_choice: "{{choices}}"
    doc_to_target: "{{answer}}"
    metric_list: [{metric: acc}]

Nothing here is imported by the rest of lora_merge unless lm-eval tasks are asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.report import MetricScore


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def run_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    group: str = "lm-eval",
) -> list[MetricScore]:
    """Run lm-eval ``tasks`` on a loaded causal LM; one MetricScore per task and 0–1 metric (as 0–100)."""
    if not lm_eval_available():
        raise LoraMergeError("--lm-eval-tasks needs lm-evaluation-harness: pip install '.[eval]' (or pip install lm-eval)")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise LoraMergeError(f"--lm-eval-include {include_path}: no such folder of task YAMLs")
    # Indexing lm-eval's thousands of built-in task YAMLs is slow (docs/benchmarks.md, "Figures the code
    # cites"): skip it when the local folder defines every task asked for.
    manager = None
    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LoraMergeError(f"unknown lm-eval task(s) {', '.join(unknown)}: check the name, or the YAMLs under "
                             f"{include_path or 'lm-eval tasks'} (`lm-eval ls tasks` lists them)")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False,
                              bootstrap_iters=0, verbosity="ERROR")
    if not results:
        raise LoraMergeError("lm-eval returned no results")
    return scores_from_results(results, group)


def scores_from_results(results: dict, group: str) -> list[MetricScore]:
    """lm-eval's ``results`` dict → MetricScore rows for metrics on a 0–1 scale."""
    n_samples = results.get("n-samples", {})
    out = []
    for task, metrics in results.get("results", {}).items():
        n = n_samples.get(task, {}).get("effective") or 0
        for key, value in metrics.items():
            metric, _, _filter = key.partition(",")
            if metric.endswith("_stderr") or metric == "alias" or not isinstance(value, (int, float)):
                continue
            if isinstance(value, bool) or math.isnan(value) or not 0.0 <= value <= 1.0:
                continue
            out.append(MetricScore(group, task, f"lm-eval:{metric}", int(n), 100.0 * float(value)))
    return out
