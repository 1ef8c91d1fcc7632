"""Skill training on TRL's SFTTrainer: modes lora | qlora | full, strategies ptm | cft | rt | general.

- ``ptm``: θpre trained on D alone → a skill pack under ``adapters/NAME`` (a PEFT adapter, or for ``full`` the
  dense task vector θD − θpre), ready to fold.
- ``cft``: θG continued on D (optionally with general data replayed) → a model folder.
- ``rt``: θpre retrained on G ∪ D → a model folder.
- ``general``: θpre tuned on general data G → a model folder that records |G| for ω = |D|/|G|.

Model folders carry ``lora_merge.json`` (role, lineage, data counts, steps, tokens, wall time), so the paper's
cost table can be printed from the artefacts alone. Every output is written into a temporary folder beside its
target and renamed into place at the end: a failed or interrupted run leaves no half output. Ctrl-C saves a
checkpoint into the run folder; ``resume`` continues from the last one.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_merge.core.console import quiet_libraries
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.names import check_name
from lora_merge.core.output import check_output, staged_output
from lora_merge.io.numerics import require_finite_folder
from lora_merge.train.completion_logits import completion_positions_only
from lora_merge.train.data import TrainingMix, count_tokens, load_data, mix, replay_sample
from lora_merge.train.processes import Processes
from lora_merge.train.progress import LOG_NAME, quiet_trainer
from lora_merge.train.save import RunPlan, TrainResult, write_model_folder, write_pack
from lora_merge.train.training_recipe import TrainingRecipe

MODEL_STRATEGIES = ("cft", "rt", "general")


def _model_folder(path: Path | None, what: str, flag: str) -> Path:
    if path is None:
        raise LoraMergeError(f"no {what} given: pass {flag} (a local model folder)")
    if not path.is_dir():
        raise LoraMergeError(f"{what} {path} does not exist (pass {flag} a local model folder; download hub models "
                             "first, e.g. `hf download ORG/MODEL --local-dir models/MODEL`)")
    if not (path / "config.json").is_file():
        raise LoraMergeError(f"{what} {path} has no config.json: not a transformers model folder")
    return path


def plan_run(r: TrainingRecipe) -> RunPlan:
    """Resolve and check the run's inputs and outputs (cheap, before anything is loaded or written)."""
    name = r.name or (r.data.stem if isinstance(r.data, Path) else None)
    if not name:
        raise LoraMergeError("the run needs a name: pass --name (or give a data file to name it after)")
    check_name(name, "--name" if r.name else f"the run name taken from {r.data} (pass --name)")
    if r.data is None:
        raise LoraMergeError("no training data: pass --data FILE (jsonl, json, parquet or csv)")
    if r.strategy == "cft":
        start = _model_folder(r.general, "general model", "--general")
        base = _model_folder(r.base, "base model", "--base") if r.base else None
    else:
        start = base = _model_folder(r.base, "base model", "--base")
    if r.strategy == "rt" and r.general_data is None:
        raise LoraMergeError("strategy rt retrains θpre on G ∪ D: pass --general-data FILE as well as --data")
    if r.replay is not None and r.strategy != "cft":
        raise LoraMergeError("--replay mixes general data into continued finetuning: use it with --strategy cft")
    if r.mode == "full" and r.strategy == "ptm" and r.target_modules != "all-linear":
        raise LoraMergeError("target_modules applies to lora and qlora; full mode trains every parameter")
    if r.freeze and r.mode != "full":
        raise LoraMergeError(f"freeze {', '.join(r.freeze)}: freezing applies to --mode full; in {r.mode} mode only "
                             "the adapter trains and the embeddings stay as they are already (drop freeze)")
    produces = "pack" if r.strategy == "ptm" else "model"
    target = r.out or (r.adapters_dir / name if produces == "pack" else Path("runs/models") / name)
    origin = r.out_origin or ("the default --adapters-dir/--name" if produces == "pack" else
                              "the default runs/models/--name")
    inputs = (start, base, r.tokenizer, *(p for p in (r.data, r.general_data, r.replay) if isinstance(p, Path)))
    run_dir = r.run_dir or Path("runs/train") / name
    plan = RunPlan(name, start, base, target, run_dir, produces, origin, inputs)
    check_output(target, r.force, inputs, kind=plan.kind, origin=origin)  # before anything is loaded
    return plan


def assemble(r: TrainingRecipe) -> TrainingMix:
    """The rows this run trains on, with a count per source."""
    skill = load_data(r.data, "data")
    if r.strategy == "rt":
        return mix({"general": load_data(r.general_data, "general data"), "skill": skill})
    if r.strategy == "general":
        return mix({"general": skill})
    if r.replay is not None:
        ratio = 1.0 if r.replay_ratio is None else r.replay_ratio
        return mix({"skill": skill}, {"replay": replay_sample(load_data(r.replay, "replay"), len(skill), ratio, r.seed)})
    return mix({"skill": skill})


def load_tokenizer(folder: Path, fmt: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # transformers raises many kinds for a folder without a usable tokenizer
        raise LoraMergeError(f"no usable tokenizer in {folder} ({type(e).__name__}); pass --tokenizer FOLDER") from None
    if fmt == "chat" and not getattr(tok, "chat_template", None):
        raise LoraMergeError(
            f"the data is in chat format but the tokenizer in {folder} has no chat template; add one "
            "(tokenizer.chat_template) or use a tokenizer that has one (--tokenizer FOLDER), or give plain-text "
            "prompt/completion rows"
        )
    if tok.eos_token is None:
        raise LoraMergeError(f"the tokenizer in {folder} has no eos token; the model could not learn to stop")
    return tok


@dataclass
class Hardware:
    cuda: bool
    dtype: torch.dtype
    precision: str
    optim: str
    warnings: list[str]


def hardware(r: TrainingRecipe) -> Hardware:
    """What this machine can honour of the recipe (a GPU recipe still runs, in float32, on a CPU)."""
    cuda = torch.cuda.is_available()
    warnings, precision, optim = [], r.precision, r.optim
    if not cuda and precision != "float32":
        warnings.append(f"no CUDA GPU: training in float32 instead of {precision}")
        precision = "float32"
    if not cuda and ("paged" in optim or "8bit" in optim):
        warnings.append(f"no CUDA GPU: optimiser adamw_torch instead of {optim}")
        optim = "adamw_torch"
    dtype = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Hardware(cuda, dtype, precision, optim, warnings)


def load_model(r: TrainingRecipe, start: Path, hw: Hardware):
    """The start model: plain, or 4-bit for QLoRA (bitsandbytes; runs on CPU too, slowly)."""
    from transformers import AutoModelForCausalLM

    if r.mode != "qlora":
        return AutoModelForCausalLM.from_pretrained(start, dtype=hw.dtype)
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise LoraMergeError("qlora needs bitsandbytes: pip install 'lora_merge[qlora]'") from None
    from peft import prepare_model_for_kbit_training

    compute = torch.bfloat16 if hw.cuda else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=r.quant_type,
                               bnb_4bit_use_double_quant=r.double_quant, bnb_4bit_compute_dtype=compute)
    if hw.cuda:
        from accelerate import PartialState

        device_map = {"": PartialState().local_process_index}
    else:
        device_map = {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(start, quantization_config=quant, device_map=device_map,
                                                     dtype=compute)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        where = "this GPU" if hw.cuda else "this CPU (bitsandbytes 4-bit on CPU needs bitsandbytes ≥ 0.48)"
        raise LoraMergeError(f"cannot load {start} in 4 bits on {where}: {e}; use --mode lora instead") from None
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=r.gradient_checkpointing)


def lora_config(r: TrainingRecipe):
    from peft import LoraConfig

    return LoraConfig(r=r.rank, lora_alpha=r.alpha, lora_dropout=r.dropout, target_modules=r.target_modules,
                      use_rslora=r.rslora, bias="none", task_type="CAUSAL_LM")


def sft_config(r: TrainingRecipe, run_dir: Path, hw: Hardware):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(run_dir), num_train_epochs=r.epochs, max_steps=r.max_steps, learning_rate=r.lr,
        lr_scheduler_type=r.lr_scheduler, warmup_steps=r.warmup, weight_decay=r.weight_decay,
        per_device_train_batch_size=r.batch_size, gradient_accumulation_steps=r.grad_accum, max_length=r.max_length,
        optim=hw.optim, bf16=hw.precision == "bf16", fp16=hw.precision == "fp16", use_cpu=not hw.cuda,
        activation_checkpointing=r.gradient_checkpointing, completion_only_loss=r.completion_only_loss,
        train_sampling_strategy="group_by_length" if r.group_by_length else "random",
        seed=r.seed, logging_steps=r.logging_steps, save_strategy="steps", save_steps=r.save_steps,
        save_total_limit=r.save_total_limit, report_to="none", disable_tqdm=not r.progress,
    )


def build_trainer(r: TrainingRecipe, plan: RunPlan, data: TrainingMix, hw: Hardware, callbacks=()):
    """The SFTTrainer for this run (exposed so tests can look at the collated batches)."""
    from datasets import Dataset
    from trl import SFTTrainer

    tokenizer = load_tokenizer(r.tokenizer or plan.start, data.format)
    model = load_model(r, plan.start, hw)
    freeze_parameters(model, r.freeze)  # before the trainer builds its optimiser, which skips frozen parameters
    trainer = SFTTrainer(
        model=model, args=sft_config(r, plan.run_dir, hw), train_dataset=Dataset.from_list(data.rows),
        processing_class=tokenizer, peft_config=None if r.mode == "full" else lora_config(r),
        callbacks=[*callbacks],
    )
    if not r.progress:
        # Without progress bars transformers prints every log dict raw; the losses stay in the trainer's
        # state (TrainResult.final_loss) and a caller's own callback can show progress instead.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def freeze_parameters(model, targets: list[str]) -> list[str]:
    """Set requires_grad False on the parameters of each target ("embeddings": the input embeddings, "lm_head":
    the output head) and return their names. A tied head shares its tensor with the embeddings, so either target
    freezes both."""
    if not targets:  # nothing to do (and a 4-bit model arrives with every base parameter frozen already)
        return []
    modules = {"embeddings": model.get_input_embeddings, "lm_head": model.get_output_embeddings}
    for target in targets:
        module = modules[target]()
        if module is None:
            raise LoraMergeError(f"freeze {target}: this model ({type(model).__name__}) has no {target} module; "
                                 "drop it from freeze")
        for p in module.parameters():
            p.requires_grad_(False)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if not any(p.requires_grad for p in model.parameters()):
        raise LoraMergeError(f"freeze {', '.join(targets)} leaves no parameter to train")
    return frozen


class _Interrupt:
    """Ctrl-C during training: finish the current step, save a checkpoint, stop (a second Ctrl-C aborts)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def callback(self):
        from transformers import TrainerCallback

        flag = self

        class SaveAndStop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if flag.requested:
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return SaveAndStop()


def checkpoint_to_resume(r: TrainingRecipe, run_dir: Path, clear: bool = True) -> tuple[str | None, int | None]:
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    if r.resume:
        if last is None:
            raise LoraMergeError(f"--resume: no checkpoint in {run_dir}; start without --resume")
        state = json.loads((Path(last) / "trainer_state.json").read_text())
        return last, int(state.get("global_step", 0))
    if last is not None:
        if not r.force:
            raise LoraMergeError(f"{run_dir} holds checkpoints of an earlier run ({Path(last).name}); pass --resume "
                                 "to continue it or --force to start over")
        if clear:
            clear_run_dir(run_dir)
    return None, None


def clear_run_dir(run_dir: Path) -> None:
    """Start over: remove what an earlier run wrote into ``run_dir`` (``checkpoint-N`` folders, the log), and only
    that: ``--run-dir .`` or a folder of the user's own keeps everything else."""
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink() and re.fullmatch(r"checkpoint-\d+", entry.name):
            shutil.rmtree(entry)
        elif entry.name == LOG_NAME and not entry.is_dir():
            entry.unlink()


def final_loss(log_history: list[dict]) -> float | None:
    losses = [e["loss"] for e in log_history if "loss" in e]
    if losses:
        return float(losses[-1])
    done = [e["train_loss"] for e in log_history if "train_loss" in e]
    return float(done[-1]) if done else None


def train_skill(recipe: TrainingRecipe, callbacks=()) -> TrainResult:
    """Train one run as the recipe says and write its pack or model folder (see the module docstring)."""
    plan = plan_run(recipe)
    data = assemble(recipe)
    hw = hardware(recipe)
    processes = Processes()
    quiet_libraries(qlora=recipe.mode == "qlora")  # before peft is first imported: it imports bitsandbytes, which warns
    # Every process reads the same run folder and reaches the same decision (or error) whether or not the main
    # process has cleared a stale one yet; only the main process clears it.
    resume_from, resumed_step = checkpoint_to_resume(recipe, plan.run_dir, clear=processes.is_main)
    started = time.perf_counter()
    with _Interrupt() as interrupt, completion_positions_only(hw.cuda):
        trainer = build_trainer(recipe, plan, data, hw, [*callbacks, interrupt.callback()])
        quiet_trainer(trainer, plan.run_dir, recipe.progress)  # a bar with the loss; raw log dicts to the run folder
        trainer.train(resume_from_checkpoint=resume_from)
    if interrupt.requested:
        step = trainer.state.global_step
        raise LoraMergeError(f"interrupted at step {step}: checkpoint saved in {plan.run_dir / f'checkpoint-{step}'}; "
                             "run the same command with --resume to continue. No output was written.")
    wall = time.perf_counter() - started
    ds = trainer.train_dataset
    result = TrainResult(
        out=plan.target, produces=plan.produces, strategy=recipe.strategy, mode=recipe.mode, instances=len(ds),
        tokens=count_tokens(ds), steps=trainer.state.global_step, epochs=float(trainer.state.epoch or 0.0),
        wall_seconds=wall, final_loss=final_loss(trainer.state.log_history), counts=dict(data.counts),
        resumed_from_step=resumed_step, warnings=hw.warnings, main_process=processes.is_main,
    )
    state = gathered_state(recipe, trainer, processes)  # every process takes part in the gather
    if processes.is_main:  # under `accelerate launch`, only the main process writes the output
        writer = write_pack if plan.produces == "pack" else write_model_folder
        with staged_output(plan.target, force=recipe.force, inputs=plan.inputs, notes=result.warnings,
                           kind=plan.kind, origin=plan.out_origin) as tmp:  # killed runs' leftovers cleaned, noted
            result.record = writer(tmp, recipe, plan, data, result, trainer, state)
            require_finite_folder(tmp, f"the trained {plan.produces} {plan.name!r}")  # never publish NaN/Inf
    processes.barrier()
    return result


def gathered_state(recipe: TrainingRecipe, trainer, processes: Processes) -> dict | None:
    """Full-parameter weights gathered from every process (FSDP and DeepSpeed shard them); None when the
    model in this process already holds them all (one process, or a LoRA adapter, which DDP replicates)."""
    if processes.count < 2 or recipe.mode != "full":
        return None
    return trainer.accelerator.get_state_dict(trainer.model)


