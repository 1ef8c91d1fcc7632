"""Model cards (README.md), generated from a folder's record: a skill pack's manifest or a model's lora_merge.json.

:func:`write_card` is the one card writer. It reads only the record it is given
(this module imports no pack code, so packs and cards depend one way). Cards are
huggingface_hub ``ModelCard``s: YAML front matter from ``ModelCardData`` (``base_model``,
``base_model_relation``, tags, licence) that the Hub and ``ModelCard.load`` read, then a
markdown body whose table cells are escaped (a ``|`` in a name or in |D|/|G| stays in its cell).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_merge.core.hub import hub_id
from lora_merge.core.model_record import ModelRecord
from lora_merge.core.output import replace_file
from lora_merge.core.printable import printable


def write_card(folder: Path, record: Any) -> Path:
    """Write README.md for ``record``: a :class:`ModelRecord` (merged or trained model) or a pack manifest."""
    if isinstance(record, ModelRecord):
        text = merged_card(record) if record.role == "merged" else trained_card(record)
    else:
        text = pack_card(record)
    return replace_file(Path(folder) / "README.md", text)  # a README.md that is a link is replaced, not followed


def front_matter(base_model: str | None, relation: str | None, library: str, tags: list[str],
                 license: str | None = None) -> str:
    """The YAML front matter through huggingface_hub's ModelCardData (strings from packs escaped first).

    ``base_model`` goes in only as a Hub repo id (:func:`lora_merge.core.hub.hub_id`: ``org/name``, or the repo
    of a cache snapshot): the Hub reads it as one, and a local path (``/tmp/…``) would be a broken link that
    publishes the author's file layout. The body's table and text still name the local folder.
    """
    from huggingface_hub import ModelCardData  # imported when a card is written, not at start-up

    base_model = hub_id(base_model)
    data = ModelCardData(base_model=printable(base_model) if base_model else None,
                         base_model_relation=relation if base_model else None, library_name=library, tags=tags,
                         license=printable(license) if license else None)
    return f"---\n{data.to_yaml()}\n---\n"


def _fmt(v: object) -> str:
    """Card text: floats short, strings from the pack with control characters escaped."""
    return "—" if v is None else f"{v:g}" if isinstance(v, float) else printable(v)


def _cell(v: object) -> str:
    """A markdown table cell: as :func:`_fmt`, with ``|`` escaped so the row keeps its columns."""
    return _fmt(v).replace("|", "\\|")


NO_RECOMMENDATION = "none: use ω = \\|D\\|/\\|G\\|"


def pack_card(m: Any) -> str:
    """The card of a skill pack, from its manifest (skill.json)."""
    t, d = m.training, m.data
    rec = m.recommended_weight
    lines = [
        front_matter(m.base_model.name_or_path, "adapter", "peft" if m.kind == "lora" else "lora_merge",
                     ["lora_merge", "skill-pack", "merge-to-learn"], m.license).rstrip("\n"),
        f"# Skill pack: {_fmt(m.name)}",
        "",
        _fmt(m.description) if m.description else "_No description._",
        "",
        f"A {'LoRA' if m.kind == 'lora' else 'dense (full-parameter)'} task vector τ = θD − θpre, made to be folded "
        "into a general model with lora_merge:",
        "",
        "```",
        f"lora-merge fold --general GENERAL_DIR --adapters {_fmt(m.name)} --out merged/",
        "```",
        "",
        "| field | value |",
        "|---|---|",
        f"| kind | {m.kind} |",
        f"| base model | {_cell(m.base_model.name_or_path or 'unknown')} |",
        f"| training instances \\|D\\| | {_cell(d.instances)} |",
        f"| training tokens | {_cell(d.tokens)} |",
        f"| method / strategy | {_cell(t.method)} / {_cell(t.strategy)} |",
        f"| rank / alpha | {_cell(t.rank)} / {_cell(t.alpha)} |",
        f"| lr / epochs / steps | {_cell(t.lr)} / {_cell(t.epochs)} / {_cell(t.steps)} |",
        f"| recommended ω | {f'{rec.value:g} ({_cell(rec.rule)})' if rec else NO_RECOMMENDATION} |",
        f"| license | {_cell(m.license)} |",
        f"| tool version | {_cell(m.tool_version)} |",
        "",
        "## Files",
        "",
    ]
    lines += [f"- `{_fmt(f)}` sha256 `{_fmt(h)}`" for f, h in sorted(m.files.items())]
    if m.evaluation:
        lines += ["", "## Evaluation", "", "| metric | score |", "|---|---|"]
        lines += [f"| {_cell(k)} | {v:.4g} |" for k, v in sorted(m.evaluation.items())]
    return "\n".join(lines) + "\n"


def base_check_text(p) -> str:
    """The provenance verdict of a folded pack for the card (lora_merge/pack/provenance.py)."""
    distance = f", distance {p.base_distance:.3g}" if p.base_distance is not None else ""
    distance += f", cosine {p.base_cosine:.3f}" if p.base_cosine is not None else ""
    return {"descends": f"descends{distance}", "foreign-allowed": f"does NOT descend (allowed){distance}",
            "no-sketch": "not checked: no sketch"}.get(p.base_check or "", "—")


def merged_card(record: ModelRecord) -> str:
    """The card of a merged model: formula, each folded pack with its ω and rule, the recipe and its command."""
    lines = [
        front_matter(record.general_model, "merge", "transformers", ["lora_merge", "merge", "merge-to-learn"],
                     record.license).rstrip("\n"),
        "# Merged model",
        "",
        f"Made by lora_merge {record.tool_version}: skill task vectors folded into the general model "
        f"`{_fmt(record.general_model)}` with the `{record.method}` rule.",
        "",
        f"Formula: `{record.formula}`",
        "",
        "| pack | kind | ω | rule | \\|D\\| | tensors | θG from the pack's base | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in record.packs or []:
        hashes = ", ".join(f"{f}: {h[:16]}…" for f, h in sorted(p.sha256.items())) or "not recorded"
        lines.append(f"| {_cell(p.name)} | {_cell(p.kind)} | {p.weight:.4g} | {_cell(p.weight_formula)} "
                     f"| {_cell(p.instances)} | {p.tensors} | {_cell(base_check_text(p))} | {_cell(hashes)} |")
    if record.base_model:
        lines += ["", f"Base model (θpre) used for replaced tensors: `{_fmt(record.base_model)}`"]
    if record.warnings:
        lines += ["", "## Warnings", ""] + [f"- {_fmt(w)}" for w in record.warnings]
    if record.command:
        lines += ["", "## Reproduce", "", "The recipe (`lora_merge_recipe.yml`) reruns this merge bit for bit:", "",
                  "```", _fmt(record.command), "```"]
    if record.recipe:
        import yaml

        lines += ["", "```yaml", printable(yaml.safe_dump(record.recipe, sort_keys=False, allow_unicode=True),
                                           keep="\n").rstrip("\n"), "```"]
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
