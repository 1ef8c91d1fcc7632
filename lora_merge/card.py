"""Model cards (README.md), generated from a folder's record: a skill pack's manifest or a model's lora_merge.json.

:func:`write_card` is the one card writer. It reads only the record it is given
(this module imports no pack code, so packs and cards depend one way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_merge.model_record import ModelRecord
from lora_merge.printable import printable


def write_card(folder: Path, record: Any) -> Path:
    """Write README.md for ``record``: a :class:`ModelRecord` (merged or trained model) or a pack manifest."""
    if isinstance(record, ModelRecord):
        text = merged_card(record) if record.role == "merged" else trained_card(record)
    else:
        text = pack_card(record)
    path = Path(folder) / "README.md"
    path.write_text(text)
    return path


def _fmt(v: object) -> str:
    """A card cell: floats short, strings from the pack with control characters escaped."""
    return "—" if v is None else f"{v:g}" if isinstance(v, float) else printable(v)


def pack_card(m: Any) -> str:
    """The card of a skill pack, from its manifest (skill.json)."""
    t, d = m.training, m.data
    rec = m.recommended_weight
    lines = [
        "---",
        "library_name: peft" if m.kind == "lora" else "library_name: lora_merge",
        f"base_model: {_fmt(m.base_model.name_or_path or 'unknown')}",
        "tags: [lora_merge, skill-pack, merge-to-learn]",
        "---",
        f"# Skill pack: {_fmt(m.name)}",
        "",
        _fmt(m.description) if m.description else "_No description._",
        "",
        f"A {'LoRA' if m.kind == 'lora' else 'dense (full-parameter)'} task vector τ = θD − θpre, made to be folded "
        "into a general model with lora_merge:",
        "",
        "```",
        f"python cli.py fold --general GENERAL_DIR --adapters {_fmt(m.name)} --out merged/",
        "```",
        "",
        "| field | value |",
        "|---|---|",
        f"| kind | {m.kind} |",
        f"| base model | {_fmt(m.base_model.name_or_path or 'unknown')} |",
        f"| training instances \\|D\\| | {_fmt(d.instances)} |",
        f"| training tokens | {_fmt(d.tokens)} |",
        f"| method / strategy | {_fmt(t.method)} / {_fmt(t.strategy)} |",
        f"| rank / alpha | {_fmt(t.rank)} / {_fmt(t.alpha)} |",
        f"| lr / epochs / steps | {_fmt(t.lr)} / {_fmt(t.epochs)} / {_fmt(t.steps)} |",
        f"| recommended ω | {f'{rec.value:g} ({_fmt(rec.rule)})' if rec else 'none: use ω = |D|/|G|'} |",
        f"| license | {_fmt(m.license)} |",
        f"| tool version | {_fmt(m.tool_version)} |",
        "",
        "## Files",
        "",
    ]
    lines += [f"- `{_fmt(f)}` sha256 `{_fmt(h)}`" for f, h in sorted(m.files.items())]
    if m.evaluation:
        lines += ["", "## Evaluation", "", "| metric | score |", "|---|---|"]
        lines += [f"| {_fmt(k)} | {v:.4g} |" for k, v in sorted(m.evaluation.items())]
    return "\n".join(lines) + "\n"


def merged_card(record: ModelRecord) -> str:
    """The card of a merged model: formula, and each folded pack with its ω and rule."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [lora_merge, merge, merge-to-learn]",
        "---",
        "# Merged model",
        "",
        f"Made by lora_merge {record.tool_version}: skill task vectors folded into the general model "
        f"`{record.general_model}` with the `{record.method}` rule.",
        "",
        f"Formula: `{record.formula}`",
        "",
        "| pack | kind | ω | rule | \\|D\\| | tensors | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in record.packs or []:
        hashes = ", ".join(f"{f}: {h[:16]}…" for f, h in sorted(p.sha256.items())) or "not recorded"
        lines.append(
            f"| {_fmt(p.name)} | {p.kind} | {p.weight:.4g} | {p.weight_formula} | {_fmt(p.instances)} "
            f"| {p.tensors} | {hashes} |"
        )
    if record.base_model:
        lines += ["", f"Base model (θpre) used for replaced tensors: `{record.base_model}`"]
    if record.warnings:
        lines += ["", "## Warnings", ""] + [f"- {_fmt(w)}" for w in record.warnings]
    lines += ["", "Full record: `lora_merge.json`."]
    return "\n".join(lines) + "\n"


TRAINED_ROLES = {"cft": "continued finetuning (CFT) of the start model", "rt": "retraining (RT) of θpre on G ∪ D",
                 "general": "general tuning of θpre on G"}


def trained_card(rec: ModelRecord) -> str:
    """The card of a trained model (general, CFT or RT): lineage, data and cost."""
    what = TRAINED_ROLES.get(rec.role, rec.role)
    t = rec.training or {}
    return "\n".join([
        f"# {rec.name} ({rec.role})", "", rec.description or f"A model made by lora_merge: {what}.", "",
        "| field | value |", "|---|---|", f"| role | {rec.role} |",
        f"| start model | {rec.lineage.start_model if rec.lineage else 'unknown'} |", f"| method | {t.get('method')} |",
        f"| training instances | {rec.data.instances} |", f"| tokens | {rec.data.tokens} |",
        f"| steps | {rec.cost.steps if rec.cost else '—'} |",
        f"| wall time | {f'{rec.cost.wall_seconds:.1f} s' if rec.cost else '—'} |", "",
        "Everything about the run is in `lora_merge.json`.", "",
    ])
