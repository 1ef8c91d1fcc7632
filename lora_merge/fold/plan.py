"""The fold plan: one request in, the terms θ = θG + rule(ω1·τ1, …, ωk·τk) out, every check done once.

:func:`plan_fold` is the one place that turns a :class:`FoldRequest` into a
:class:`FoldPlan`: it opens the general model, loads and binds each pack to the
model's layout under a unique id (its folder, never its display name: two packs
both named ``skill`` stay two terms), chooses each ω with the rule that chose
it, and checks what can be checked before anything is read or written (method,
count and finiteness of ω, pack family). Every caller — the fold, the paper's
variants, both sweep modes, the benchmarks and the studies — folds from a plan,
so their inputs cannot drift apart. Pack tensors are checked for NaN/Inf on
their first read, whichever caller reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.printable import printable
from lora_merge.fold.request import FoldRequest
from lora_merge.fold.variants import LINEAR_INTERP_FORMULA, WISE_FT_FORMULA, model_difference
from lora_merge.io.fingerprint import fingerprint_model, read_config, weights_identity
from lora_merge.io.numerics import guard_pack_reads
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.lineage import check_effective
from lora_merge.pack.provenance import check_base
from lora_merge.pack.quant_error import fold_warnings as quant_fold_warnings
from lora_merge.pack.skillpack import SkillPack, load_pack, resolve_pack
from lora_merge.pack.task_vector import TargetModel, TaskVector
from lora_merge.rules.combine import VARIANT_METHODS, RuleOptions, get_rule
from lora_merge.rules.omega import (
    Weight,
    check_weights,
    choose_weights,
    general_size_from_folder,
    recommended_warning,
)

LINEAR_FORMULA = "θ = θG + Σk ωk·τk"


@dataclass(frozen=True)
class PlanTerm:
    """One ωk·τk of a plan: a pack (or a model difference) bound to the general model's layout."""

    id: str  # unique in the plan: the resolved folder the vector comes from
    label: str  # unique display name: the pack's name, numbered when two packs share it
    name: str  # the pack's own name, as its manifest gives it
    path: str
    kind: str  # lora | full | model-difference | cft-model
    weight: Weight
    vector: TaskVector  # τ, not yet scaled by ω
    instances: int | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    base_check: str | None = None  # provenance: descends | foreign-allowed | no-sketch (packs only)
    base_distance: float | None = None  # ‖θG − θpre‖/‖θpre‖ at the pack's sketched positions (median over weights)
    base_cosine: float | None = None  # cos(θG, θpre) there (median over weights): the verdict's measure

    @property
    def tensors(self) -> int:
        return len(self.vector.keys())

    def scaled(self) -> TaskVector:
        """ω·τ."""
        return self.weight.value * self.vector


@dataclass
class FoldPlan:
    """What a fold will compute and record: the general model, the terms, |G|, warnings and the formula."""

    request: FoldRequest
    general: WeightSet
    target: TargetModel
    terms: list[PlanTerm]
    general_size: int | None
    warnings: list[str]
    formula: str
    packs: list[SkillPack] = field(default_factory=list)  # the loaded packs, in the order of their terms
    weights_chosen: bool = True  # False when the caller allowed ω to stay unknown (a sweep without |G|)
    notices: list[str] = field(default_factory=list)  # printed, not recorded as warnings (e.g. each provenance check)
    models: dict[str, WeightSet] = field(default_factory=dict)  # general / base / cft as read: a recipe pins them

    def inputs(self) -> list[Path]:
        """Every folder this plan reads: an output may not be, contain or lie inside any of them."""
        return request_inputs(self.request) + [Path(t.path) for t in self.terms]

    def vectors(self) -> list[TaskVector]:
        """ω1·τ1, …, ωk·τk, in order."""
        return [t.scaled() for t in self.terms]

    def reweighted(self, values: Sequence[float], how: str, **request_changes) -> FoldPlan:
        """The same packs at other ω (one per term, in order), e.g. one point of a sweep."""
        check_weights(values, len(self.terms))
        check_effective(self.packs, list(values)[:len(self.packs)], "fold")
        terms = [replace(t, weight=Weight(float(v), "explicit", f"ω = {v:g} ({how})"))
                 for t, v in zip(self.terms, values, strict=True)]
        request = replace(self.request, weights=list(values), **request_changes)
        return replace(self, request=request, terms=terms, warnings=list(self.warnings), weights_chosen=True)


def request_inputs(req: FoldRequest) -> list[Path]:
    """The folders a request names as inputs (packs given by name are added once the plan resolves them)."""
    named = [req.general, req.base, req.cft] + ([req.adapters_dir] if req.packs else [])
    return [p for p in named if p is not None]


def load_packs(names: Sequence[str], adapters_dir: Path, verify: bool = True) -> list[SkillPack]:
    """Load each named pack (a name in the registry, or a folder); the same folder twice is an error."""
    if not names:
        raise LoraMergeError("no skill packs given: pass --adapters NAME[,NAME…]")
    packs = [load_pack(resolve_pack(n, adapters_dir), verify=verify) for n in names]
    seen: set[str] = set()
    for p in packs:
        if str(p.path.resolve()) in seen:
            raise LoraMergeError(f"pack {p.name!r} is listed twice")
        seen.add(str(p.path.resolve()))
    return packs


def check_recorded_hashes(packs: Sequence[SkillPack], expected: Sequence[dict[str, str] | None]) -> None:
    """Refuse a pack whose files no longer have the sha256 a recipe recorded (a rerun would not reproduce)."""
    if len(expected) != len(packs):
        raise LoraMergeError(f"the recipe records hashes for {len(expected)} packs but {len(packs)} are folded")
    for p, hashes in zip(packs, expected, strict=True):
        if not hashes:
            continue
        # Every file the pack has now, against the recipe: a file the recipe did not record (a config a format-1
        # manifest left unhashed, a sketch added since) changes the result as surely as a changed one.
        actual_files = p.digests()  # of the bytes the fold reads; verified packs hashed them already
        for fname in sorted(set(hashes) | set(actual_files)):
            h, actual = hashes.get(fname, "not recorded"), actual_files.get(fname, "missing")
            if actual == h:
                continue
            what = (f"{printable(fname)} is not pinned by the recipe (it changes the result, and the recipe records "
                    "no sha256 for it)" if fname not in hashes else
                    f"{printable(fname)} is not the file the recipe recorded (sha256 {printable(h[:12])}…, now "
                    f"{actual[:12]}…)")
            raise LoraMergeError(
                f"pack {printable(p.name)!r}: {what}; the pack changed since, or the recipe does not pin it, so the "
                "recipe cannot be reproduced. Restore the pack, or remove its sha256 from the recipe to fold it as "
                "it is now")


def check_recorded_models(req: FoldRequest, models: dict[str, WeightSet]) -> None:
    """Refuse a model whose weights are not the ones a recipe recorded (``io.fingerprint.weights_identity``)."""
    for role, expected in (req.expected_models or {}).items():
        if role not in models:
            raise LoraMergeError(f"the recipe pins a {printable(role)} model (model_sha256) that this fold does not use")
        folder = getattr(req, role)
        if weights_identity(folder, models[role]) != expected:
            raise LoraMergeError(
                f"the {role} model {folder} is not the one the recipe recorded (its config, tensor layout or sampled "
                "weights differ), so the recipe cannot be reproduced. Fold into the recorded model, or remove "
                f"model_sha256.{role} from the recipe to fold into this one")


def unique_labels(names: Sequence[str]) -> list[str]:
    """Display names: each name as is when it is unique, else numbered by position (skill#1, skill#2)."""
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def bind_packs(packs: Sequence[SkillPack], target: TargetModel, base: WeightSet | None,
               weights: Sequence[Weight] | None = None) -> list[PlanTerm]:
    """Each pack's τ bound to ``target`` (NaN/Inf refused on first read), with its ω, under a unique id.

    Without ``weights`` every term has ω = 1 (the plain τ, as interference reads it).
    """
    labels = unique_labels([p.name for p in packs])
    if weights is None:
        weights = [Weight(1.0, "explicit", "ω = 1 (τ itself)")] * len(packs)
    terms = []
    for p, w, label in zip(packs, weights, labels, strict=True):
        tv = guard_pack_reads(TaskVector.from_pack(p, target, base), p.name)
        terms.append(PlanTerm(str(p.path.resolve()), label, p.name, str(p.path), p.kind, w, tv, p.instances,
                              p.digests()))  # of the bytes folded, whatever the manifest covers
    return terms


WEIGHT_RULES = ("auto", "size")


def pack_weights(packs: Sequence[SkillPack], explicit: Sequence[float] | None, general_size: int | None,
                 rule: str, choose: str = "auto") -> list[Weight]:
    """ω per pack, and the rule that chose it: the explicit values (exactly one per pack, finite); else each
    pack's recommended ω (skill.json, from `sweep --write-recommendation`) unless ``choose`` is ``size``;
    else the size rule. A sweep's ω is a task-arithmetic ω, so the interpolation rule never takes it."""
    if choose not in WEIGHT_RULES:
        raise LoraMergeError(f"--rule {choose!r}: choose auto (a pack's recommended ω, else |D|/|G|) or size")
    if explicit is not None:  # checked there: one finite ω per pack
        return choose_weights([p.name for p in packs], [p.instances for p in packs], explicit, general_size, rule=rule)
    use_rec = choose == "auto" and rule == "size_ratio"
    recs = [p.manifest.recommended_weight if use_rec and p.manifest else None for p in packs]
    rest = [p for p, r in zip(packs, recs, strict=True) if r is None]
    sized = iter(choose_weights([p.name for p in rest], [p.instances for p in rest], None, general_size, rule=rule)
                 if rest else [])
    return [next(sized) if r is None else
            Weight(r.value, "recommended", f"ω = {r.value:g} (recommended by sweep, rule {printable(r.rule)})")
            for r in recs]


def plan_fold(req: FoldRequest, *, require_weights: bool = True) -> FoldPlan:
    """Turn a request into a plan, refusing a bad request before any output is touched.

    With ``require_weights=False`` (a sweep, which sets ω itself) an unknown |G|
    or |D| leaves ω unchosen (``weights_chosen`` False, ω = 0) instead of failing.
    """
    if req.method not in VARIANT_METHODS:
        get_rule(req.method), RuleOptions(density=req.density, seed=req.seed)  # fail before any pack is read
    if req.cft is not None and req.method != "wise_ft":
        raise LoraMergeError(f"--cft is only used by --method wise_ft, not {req.method}")
    if req.method == "wise_ft":
        return _plan_wise_ft(req)
    if req.method == "linear_interp" and req.base is None:
        raise LoraMergeError("--method linear_interp needs --base DIR: the pretrained model θpre, because "
                             "θ = θpre + ω·τD + (1 − ω)·τG with τG = θG − θpre")
    general = WeightSet.open(req.general)
    base = WeightSet.open(req.base) if req.base else None
    models = {"general": general, **({"base": base} if base is not None else {})}
    check_recorded_models(req, models)
    packs = load_packs(req.packs, req.adapters_dir, verify=req.verify)
    if req.expected_sha256 is not None:
        check_recorded_hashes(packs, req.expected_sha256)
    g_size = req.general_size if req.general_size is not None else general_size_from_folder(req.general)
    rule = "size_fraction" if req.method == "linear_interp" else "size_ratio"
    chosen = True
    try:
        weights = pack_weights(packs, req.weights, g_size, rule, req.weight_rule)
    except LoraMergeError:
        if require_weights or req.weights is not None:
            raise
        chosen = False
        weights = [Weight(0.0, "unknown", "ω unknown: |G| or the pack's |D| is not recorded")] * len(packs)
    check_effective(packs, [w.value for w in weights], "fold")  # a merged pack's sources, through its ω
    target = TargetModel.from_weights(general, read_config(req.general))
    warnings = compatibility_warnings(packs, req.general, general)  # before binding: the clearer error
    warnings += [w for p, wt in zip(packs, weights, strict=True) if wt.rule == "recommended"
                 and (w := recommended_warning(p.name, wt.value, p.instances, g_size))]  # skill.json is not hashed
    if rule == "size_fraction" and req.weights is None and req.weight_rule == "auto":
        warnings += [f"pack {p.name!r} recommends ω = {p.manifest.recommended_weight.value:g} for task arithmetic "
                     "(a sweep's ω); linear_interp uses ω = |D|/(|D|+|G|) instead (or pass --weights)"
                     for p in packs if p.manifest and p.manifest.recommended_weight]
    terms = bind_packs(packs, target, base, weights)
    terms, base_warnings, notices = checked_bases(packs, terms, general, target, req)
    warnings += base_warnings + [w for p, t in zip(packs, terms, strict=True) for w in quant_fold_warnings(p, t.vector)]
    formula = LINEAR_FORMULA if req.method == "linear" else f"θ = θG + {req.method}(ω1·τ1, …, ωk·τk)"
    plan = FoldPlan(req, general, target, terms, g_size, warnings, formula, list(packs), chosen, notices, models)
    if req.method == "linear_interp":
        plan.terms.append(_general_difference_term(plan, base))
        plan.formula = LINEAR_INTERP_FORMULA
    return plan


def checked_bases(packs: Sequence[SkillPack], terms: list[PlanTerm], general: WeightSet, target: TargetModel,
                  req: FoldRequest) -> tuple[list[PlanTerm], list[str], list[str]]:
    """Each term with its provenance verdict (θG against the pack's sketch of θpre), and the checks' warnings
    and notices; a θG that does not descend from a pack's base is refused unless ``req.allow_foreign_base``."""
    checked, warnings, notices = [], [], []
    for p, t in zip(packs, terms, strict=True):
        check = check_base(p, general, target, req.general, req.allow_foreign_base, t.vector.keys())
        checked.append(replace(t, base_check=check.status, base_distance=check.distance, base_cosine=check.cosine))
        warnings += check.warnings
        notices += check.notices
    return checked, warnings, notices


def _general_difference_term(plan: FoldPlan, base: WeightSet) -> PlanTerm:
    """linear_interp's −Σω·τG, τG = θG − θpre: (1 − Σω)·τG folded as θG − Σω·τG."""
    # τG spans every stored weight; a virtual (tied) head only when a pack unties it, or the output would too.
    touched = {k for t in plan.terms for k in t.vector.keys()}
    target = plan.target
    names = [n for n in target.shapes if n not in target.virtual or n in touched]
    tau_g = model_difference("τG = θG − θpre", plan.general, base, target, names,
                             ("the general model", "the base model"))
    total = sum(t.weight.value for t in plan.terms)
    base_dir = plan.request.base
    return PlanTerm(f"model-difference:{base_dir.resolve()}", "τG = θG − θpre", "τG = θG − θpre", str(base_dir),
                    "model-difference", Weight(-total, "derived", f"−Σω = {-total:.4g} (from (1 − Σω)·τG − τG)"),
                    tau_g)


def _plan_wise_ft(req: FoldRequest) -> FoldPlan:
    """θ = θG + ω·(θCFT − θG); ω = |D|/(|D|+|G|) from θCFT's lora_merge.json unless given."""
    if req.cft is None:
        raise LoraMergeError("--method wise_ft needs --cft DIR: the model that continued finetuning θG on the skill "
                             "data, because θ = θG + ω·(θCFT − θG)")
    if req.packs:
        raise LoraMergeError("--method wise_ft interpolates towards the --cft model and takes no skill packs; "
                             "drop --adapters (or use linear_interp / linear for packs)")
    if req.weights is not None:
        if len(req.weights) != 1:
            raise LoraMergeError(f"--weights gives {len(req.weights)} values; wise_ft takes one ω")
    general, cft = WeightSet.open(req.general), WeightSet.open(req.cft)
    models = {"general": general, "cft": cft}
    check_recorded_models(req, models)
    g_size = req.general_size if req.general_size is not None else general_size_from_folder(req.general)
    label = req.cft.name
    try:
        d_size = general_size_from_folder(req.cft)
    except LoraMergeError:
        d_size = None
    weight = choose_weights([label], [d_size], req.weights, g_size, rule="size_fraction")[0]
    target = TargetModel.from_weights(general, read_config(req.general))
    names = [n for n in target.shapes if n not in target.virtual or n in cft]
    diff = model_difference(f"θCFT − θG ({label})", cft, general, target, names, ("the CFT model", "the general model"))
    extra = [k for k in cft.keys() if k not in target.shapes]
    if extra:
        raise LoraMergeError(f"the CFT model {req.cft} has weights the general model lacks ({', '.join(extra[:3])}); "
                             "it must be θG continued on D, with the same architecture")
    term = PlanTerm(f"cft:{req.cft.resolve()}", label, label, str(req.cft), "cft-model", weight, diff, d_size)
    return FoldPlan(req, general, target, [term], g_size, [], WISE_FT_FORMULA, models=models)


def compatibility_warnings(packs: Sequence[SkillPack], general_dir: Path, general: WeightSet) -> list[str]:
    """Refuse packs from another model family; warn when the base differs but the layout fits (or a pack's
    manifest is of an old format)."""
    out = [w for p in packs for w in p.warnings]
    recorded = [p for p in packs if p.manifest and p.manifest.base_model.shapes_sha256]
    if not recorded:
        return out
    fp = fingerprint_model(general_dir, general)
    for p in recorded:
        bfp = p.manifest.base_model
        diffs = bfp.differences(fp)
        if bfp.shapes_sha256 == fp.shapes_sha256 and not diffs:
            continue
        # Tied or untied embeddings and the class name do not change what a delta means; the rest is the family.
        family = [d for d in diffs if d.split(":")[0] not in ("tie_word_embeddings", "architectures",
                                                              "tensor names or shapes differ")]
        if family and bfp.shapes_sha256 != fp.shapes_sha256:
            raise LoraMergeError(
                f"pack {p.name!r} was trained on {bfp.name_or_path or 'another model'}, which differs from the "
                f"general model {general_dir} ({'; '.join(family[:3])}); fold it into a model of the same family"
            )
        out.append(f"pack {p.name!r} was trained on {bfp.name_or_path}, a different model than {general_dir} with "
                   f"a compatible layout ({'; '.join(diffs[:3])}); folded anyway, check the result")
    return out
