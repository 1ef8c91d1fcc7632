"""Training's console: one progress bar with the loss, and every Trainer log written to the run folder.

The Trainer's own ProgressCallback / PrinterCallback print each log as a raw dict (``{'loss': '4.868', …}``) on
stdout; they are replaced by :func:`quiet_trainer`, which keeps those numbers in ``RUN_DIR/train_log.jsonl``
(one JSON object per log, with its step) and shows the loss on the bar instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_merge.core import console

LOG_NAME = "train_log.jsonl"


def progress_callback(run_dir: Path, progress: bool):
    """A TrainerCallback: a bar per run (main process only) and the log lines appended to run_dir/LOG_NAME."""
    from transformers import TrainerCallback

    class ConsoleLog(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self.bar = console.bar(desc="train", unit="step", total=state.max_steps, progress=progress,
                                       initial=state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / LOG_NAME, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")
            if self.bar is not None and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ConsoleLog()


def quiet_trainer(trainer, run_dir: Path, progress: bool):
    """Swap the Trainer's dict-printing callbacks for :func:`progress_callback`; returns the trainer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(progress_callback(run_dir, progress))
    return trainer
