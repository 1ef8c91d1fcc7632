"""The start-up side of benchmarks/fold.py: each light command's whole-process wall time (issue 21).

A user pays for the interpreter, the imports and the exit as much as for the work, so these rows time the
whole `python cli.py …` process, best of STARTUP_REPEAT, on a pico pack with a manifest (built once into
benchmarks/.cache/pico/ with lora_merge.pico) and on the 1.1B model's rank-16 pack (no manifest, 50 MB).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import _models

PY = sys.executable
STARTUP_REPEAT = 5
PICO = _models.CACHE / "pico"


def pico_world() -> tuple[Path, Path]:
    """(θG folder, adapters folder holding the pack `skill`) of a pico Llama, built once."""
    general, adapters = PICO / "general", PICO / "adapters"
    if not (adapters / "skill" / "skill.json").is_file():
        from lora_merge.pico import make_lora_pack, pico_model, save_model

        shutil.rmtree(PICO, ignore_errors=True)
        model = pico_model("llama")
        save_model(model, general)
        make_lora_pack(model, general, adapters / "skill", "skill")
    return general, adapters


def startup_rows(bench, big_pack: Path) -> None:
    """Time `--help`, `pack inspect/verify`, `fold --help` and a whole pico fold, each as its own process."""
    general, adapters = pico_world()
    out = PICO / "merged"
    cli = [PY, "cli.py"]
    jobs = [
        ("cli.py --help", cli + ["--help"]),
        ("cli.py pack inspect (pico pack)", cli + ["pack", "inspect", "skill", "--adapters-dir", str(adapters)]),
        ("cli.py pack inspect (1.1B rank-16 pack)", cli + ["pack", "inspect", str(big_pack)]),
        ("cli.py pack verify (pico pack)", cli + ["pack", "verify", "skill", "--adapters-dir", str(adapters)]),
        ("cli.py fold --help", cli + ["fold", "--help"]),
        ("cli.py fold (pico model, whole process)", cli + ["--quiet", "fold", "--general", str(general), "--adapters",
                                                          "skill", "--adapters-dir", str(adapters), "--weights", "0.5",
                                                          "--out", str(out)]),
    ]
    bench.log("start-up:")
    for label, cmd in jobs:
        bench.run(label, "cli", cmd, STARTUP_REPEAT, before=lambda: shutil.rmtree(out, ignore_errors=True))
    shutil.rmtree(out, ignore_errors=True)
