"""The template probe: requests in surface forms no training row uses, to catch a model that answers by template.

``probe_prompts.jsonl`` holds project-written prompts of three kinds (``ordinary``, ``lookalike``: safe but
harmful-sounding, ``harmful``: to be refused), each in a form no training row of the project uses (all lower case
and run on, a situation first, a relayed question, two questions in one, search keywords, long and polite, a role
frame, "in exactly three steps"). As eval rows, ordinary and lookalike prompts are ``compliance`` items (answered
under the answered rule, whose template test catches one reply given to many prompts) and harmful ones ``refusal``
items; each row's family is ``probe/<kind>`` (:mod:`lora_merge.evaluate.template_probe` summarises a model's
replies per kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from lora_merge.core.errors import LoraMergeError
from lora_merge.skilldata.shipped import shipped_rows

FILE = "probe_prompts.jsonl"
KINDS = ("ordinary", "lookalike", "harmful")


@dataclass(frozen=True)
class ProbePrompt:
    id: str
    kind: str
    form: str
    prompt: str


@lru_cache(maxsize=1)
def load_probe() -> tuple[ProbePrompt, ...]:
    """The shipped probe prompts, in file order."""
    rows = shipped_rows(FILE, ("id", "kind", "form", "prompt"), ProbePrompt)
    for p in rows:
        if p.kind not in KINDS:
            raise LoraMergeError(f"{FILE}: {p.id}: kind {p.kind!r} is not one of {', '.join(KINDS)}")
    return rows


def probe_eval_sets(system: str | None) -> dict[str, list[dict]]:
    """The probe as two eval sets (one metric each): ``probe``, the ordinary and lookalike prompts as
    ``compliance`` rows, and ``probe_harmful``, the harmful ones as ``refusal`` rows; ids ``probe/<kind>/K``."""
    from lora_merge.evaluate.sets import eval_row, unique_ids

    def rows(kinds: tuple[str, ...], metric: str) -> list[dict]:
        return unique_ids(eval_row(p.prompt, "", metric, f"probe/{p.kind}", system) for p in load_probe()
                          if p.kind in kinds)

    return {"probe": rows(("ordinary", "lookalike"), "compliance"), "probe_harmful": rows(("harmful",), "refusal")}
