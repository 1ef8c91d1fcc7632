"""What the command line prints besides results: progress bars and progress messages.

One switch for the whole process, set by the global ``--no-progress`` / ``--quiet`` options (``lora_merge/cli.py``):
``--no-progress`` removes every bar (ours, and those of transformers, datasets and huggingface_hub, through their
environment switches, set before they are imported); ``--quiet`` also drops progress messages, so only results,
warnings about them and errors remain. Torch-free, so every command can import it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

_STATE = {"progress": True, "quiet": False}

# Environment switches the libraries read when they start: bars and info logs off.
_NO_BARS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
_QUIET_LOGS = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "ACCELERATE_LOG_LEVEL": "error"}


def configure(progress: bool = True, quiet: bool = False) -> None:
    """Set the process-wide switch (quiet implies no progress)."""
    _STATE["quiet"] = quiet
    _STATE["progress"] = progress and not quiet
    if not _STATE["progress"]:
        os.environ.update(_NO_BARS)
    if quiet:
        os.environ.update(_QUIET_LOGS)


def progress_enabled() -> bool:
    """Whether progress bars may be drawn."""
    return _STATE["progress"]


def is_quiet() -> bool:
    """Whether progress messages are dropped."""
    return _STATE["quiet"]


def bar(iterable: Iterable | None = None, *, desc: str, unit: str, progress: bool = True, total: int | None = None,
        **kw: Any):
    """A tqdm bar, or a silent one: when progress is off here or globally, or when there is nothing to count
    (an empty ``score: 0batch`` bar says nothing)."""
    from tqdm import tqdm

    if not _STATE.get("tqdm_ready"):
        # A plain thread lock instead of tqdm's default multiprocessing one, whose creation spawns multiprocessing's
        # resource tracker process (with Ctrl-C blocked in this thread while it starts), and no monitor thread: a
        # progress bar needs neither.
        tqdm.set_lock(threading.RLock())
        tqdm.monitor_interval = 0
        _STATE["tqdm_ready"] = True
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    off = not (progress and progress_enabled()) or total == 0
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=off, **kw)


def info(message: str) -> None:
    """A progress message (what runs now), on stderr so results on stdout stay clean; dropped by --quiet."""
    if not _STATE["quiet"]:
        print(message, file=sys.stderr, flush=True)


def quiet_libraries(*, qlora: bool = False, loading_bars: bool = True, library_warnings: bool = True) -> None:
    """Library chatter our own progress replaces: the one place that quiets transformers, datasets and bitsandbytes.

    Always: datasets' per-map bars (a training bar or a stage plan is the progress) and transformers'
    deprecation notices from inside TRL/PEFT; unless ``qlora``, bitsandbytes' warnings (peft imports it when
    installed, used or not). ``loading_bars=False``: transformers' weight-loading bars too (multi-stage runs,
    whose stage plan shows the progress). ``library_warnings=False``: transformers logs errors only (runs that
    print one line per stage). Under ``--quiet`` transformers logs errors only in any case.
    """
    import logging
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    if not qlora:
        warnings.filterwarnings("ignore", module="bitsandbytes")
        warnings.filterwarnings("ignore", message=".*bitsandbytes.*")
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    if not loading_bars:
        transformers.utils.logging.disable_progress_bar()
    if is_quiet() or not library_warnings:
        transformers.logging.set_verbosity_error()
