"""Interference between task vectors, before folding them together.

For every pair of vectors, per layer and over the whole model: the cosine
similarity ⟨τi, τj⟩ / (‖τi‖·‖τj‖), the sign-conflict rate (among entries both
vectors change, the fraction where they push in opposite directions), and each
vector's norm.

Inner products of LoRA terms go through the factors, never through ΔW:
⟨B1A1, B2A2⟩_F = tr((B1ᵀB2)(A2A1ᵀ)), two r×r products per pair, so the cosines
cost the adapters' size, not the model's (docs/benchmarks.md, "pack
interference … low-rank route only"). Sign conflicts need the entries
themselves: each vector's dense delta is formed for one tensor at a time (and
only when ``signs`` is on), never for the whole model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_merge.core import console
from lora_merge.core.errors import LoraMergeError
from lora_merge.pack.skillpack import SkillPack
from lora_merge.pack.task_vector import LORA_KEY, PEFT_PREFIX, Delta, LowRankDelta, TargetModel, TaskVector

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
OTHER = "other"  # embeddings, output head, final norm


def layer_of(name: str) -> str:
    """'layer 3' for a weight inside transformer block 3, else 'other'."""
    m = _LAYER.search(name)
    return f"layer {int(m[1])}" if m else OTHER


@dataclass
class GroupStats:
    """Sums over a group of tensors for k vectors: Gram matrix and sign counts (k×k)."""

    gram: torch.Tensor  # float64 ⟨τi, τj⟩; the diagonal is ‖τi‖²
    conflicts: torch.Tensor  # int64 entries both change with opposite signs
    both: torch.Tensor  # int64 entries both change

    @classmethod
    def empty(cls, k: int) -> "GroupStats":
        return cls(torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, k, dtype=torch.int64),
                   torch.zeros(k, k, dtype=torch.int64))

    def add(self, other: "GroupStats") -> None:
        self.gram += other.gram
        self.conflicts += other.conflicts
        self.both += other.both

    def norms(self) -> torch.Tensor:
        return self.gram.diagonal().clamp(min=0).sqrt()

    def cosine(self) -> torch.Tensor:
        """k×k cosines; NaN where a vector is zero on this group."""
        n = self.norms()
        denom = n[:, None] * n[None, :]
        return torch.where(denom > 0, self.gram / denom, torch.full_like(denom, math.nan))

    def conflict_rate(self) -> torch.Tensor:
        """k×k sign-conflict rates; NaN where no entry is changed by both."""
        both = self.both.to(torch.float64)
        return torch.where(both > 0, self.conflicts / both.clamp(min=1), torch.full_like(both, math.nan))


@dataclass
class InterferenceReport:
    names: list[str]
    overall: GroupStats
    layers: dict[str, GroupStats] = field(default_factory=dict)
    signs: bool = True

    def pairs(self) -> list[tuple[int, int]]:
        k = len(self.names)
        return [(i, j) for i in range(k) for j in range(i + 1, k)]


def delta_inner(d1: Delta, d2: Delta, device: str | torch.device = "cpu") -> float:
    """⟨d1, d2⟩_F, through the LoRA factors when both are low-rank."""
    if isinstance(d1, LowRankDelta) and isinstance(d2, LowRankDelta):
        b1, a1 = (t.double() for t in d1.factors(device))
        b2, a2 = (t.double() for t in d2.factors(device))
        if d1.transpose == d2.transpose:  # ⟨M1ᵀ, M2ᵀ⟩ = ⟨M1, M2⟩ = tr((B1ᵀB2)(A2A1ᵀ))
            return float(((b1.T @ b2) * (a1 @ a2.T)).sum())
        # ⟨B1A1, (B2A2)ᵀ⟩ = tr((B1ᵀA2ᵀ)(B2ᵀA1ᵀ))
        return float(((b1.T @ a2.T) * (a1 @ b2)).sum())
    x, y = d1.materialize(device), d2.materialize(device)
    return float(torch.dot(x.reshape(-1).double(), y.reshape(-1).double()))


def terms_inner(t1: Sequence[tuple[float, Delta]], t2: Sequence[tuple[float, Delta]], device) -> float:
    """⟨Σ c·d, Σ c'·d'⟩ = Σ c·c'·⟨d, d'⟩."""
    return sum(c1 * c2 * delta_inner(d1, d2, device) for c1, d1 in t1 for c2, d2 in t2)


def tensor_stats(vectors: Sequence[TaskVector], name: str, signs: bool, route: str, device) -> GroupStats:
    """Gram matrix and sign counts of the vectors' deltas for one tensor."""
    k = len(vectors)
    stats = GroupStats.empty(k)
    present = [i for i, v in enumerate(vectors) if name in v]
    dense = {i: vectors[i].delta(name, device) for i in present} if (signs or route == "dense") else {}
    for a, i in enumerate(present):
        for j in present[a:]:
            if route == "dense":
                g = float(torch.dot(dense[i].reshape(-1).double(), dense[j].reshape(-1).double()))
            else:
                g = terms_inner(vectors[i].terms[name], vectors[j].terms[name], device)
            stats.gram[i, j] = stats.gram[j, i] = g
            if signs and i != j:
                x, y = dense[i], dense[j]
                both = (x != 0) & (y != 0)
                stats.both[i, j] = stats.both[j, i] = int(both.sum())
                stats.conflicts[i, j] = stats.conflicts[j, i] = int((both & (x.sign() != y.sign())).sum())
    if signs:
        for i in present:
            stats.both[i, i] = int((dense[i] != 0).sum())
    return stats


def interference(
    vectors: Sequence[TaskVector],
    names: Sequence[str] | None = None,
    signs: bool = True,
    route: str = "factors",
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> InterferenceReport:
    """Pairwise cosines, sign conflicts and norms of task vectors, per layer and overall.

    ``route="factors"`` takes LoRA inner products through the factors;
    ``"dense"`` forms every delta (the reference the factor route must equal).
    """
    if len(vectors) < 1:
        raise LoraMergeError("interference needs at least one task vector")
    if route not in ("factors", "dense"):
        raise ValueError(f"route must be 'factors' or 'dense', not {route!r}")
    k = len(vectors)
    tensors: dict[str, None] = {}
    for v in vectors:
        tensors.update(dict.fromkeys(v.keys()))
    for t in tensors:
        shapes = {v.shape(t) for v in vectors if t in v}
        if len(shapes) > 1:
            raise LoraMergeError(f"the vectors give {t!r} different shapes {sorted(shapes)}: they are for different models")
    report = InterferenceReport(list(names or [v.name for v in vectors]), GroupStats.empty(k), signs=signs)
    for t in console.bar(tensors, desc="interference", unit="tensor", progress=progress):
        s = tensor_stats(vectors, t, signs, route, device)
        report.overall.add(s)
        report.layers.setdefault(layer_of(t), GroupStats.empty(k)).add(s)
    report.layers = dict(sorted(report.layers.items(), key=lambda kv: _layer_order(kv[0])))
    return report


def _layer_order(label: str) -> tuple[int, int]:
    return (1, 0) if label == OTHER else (0, int(label.split()[1]))


def layout_from_packs(packs: Sequence[SkillPack]) -> TargetModel:
    """Weight names and shapes the packs address, for reading them without the model (no --base)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def add(name: str, shape: tuple[int, ...], pack: SkillPack) -> None:
        if shapes.setdefault(name, shape) != shape:
            raise LoraMergeError(f"pack {pack.name!r} gives {name!r} shape {shape}, another pack {shapes[name]}: "
                                 "the packs are for models of different sizes")

    for p in packs:
        src = p.source()
        if p.kind != "lora":
            for key in src.keys():
                add(key, tuple(src.tensors[key].shape), p)
            continue
        fan_in_fan_out = bool((p.adapter_config or {}).get("fan_in_fan_out"))
        groups: dict[str, dict[str, tuple[int, ...]]] = {}
        for key in src.keys():
            stripped = key.removeprefix(PEFT_PREFIX)
            m = LORA_KEY.match(stripped)
            if m:
                groups.setdefault(m["module"], {})[m["part"]] = tuple(src.tensors[key].shape)
            elif stripped.endswith((".weight", ".bias")) and ".base_layer." not in stripped:
                add(stripped, tuple(src.tensors[key].shape), p)
        for module, parts in groups.items():
            a = parts.get("lora_A.weight") or parts.get("lora_embedding_A")
            b = parts.get("lora_B.weight") or parts.get("lora_embedding_B")
            if a is None or b is None or len(a) != 2 or len(b) != 2:
                continue  # TaskVector.from_pack reports the broken module
            transpose = "lora_embedding_A" in parts or fan_in_fan_out
            add(f"{module}.weight", (a[1], b[0]) if transpose else (b[0], a[1]), p)
            if "lora_B.bias" in parts:
                add(f"{module}.bias", parts["lora_B.bias"], p)
    return TargetModel(shapes)


def _fmt(x: float, spec: str = ".3f") -> str:
    return "—" if x != x else format(x, spec)


def report_lines(report: InterferenceReport) -> list[str]:
    """The report as a text table: norms, then cosine and sign-conflict rate per pair, per layer and overall."""
    pairs = report.pairs()
    width = max([len(n) for n in report.names] + [8])
    lines = ["norms ‖τ‖:"] + [f"  {n:<{width}} {report.overall.norms()[i].item():.4g}" for i, n in enumerate(report.names)]
    if not pairs:
        return lines
    heads = [f"{report.names[i]}·{report.names[j]}" for i, j in pairs]
    col = max(max(len(h) for h in heads), 15)
    lines += ["", "cosine (sign-conflict rate)", f"{'':<10}" + "".join(f"{h:>{col + 2}}" for h in heads)]
    groups = list(report.layers.items()) + [("overall", report.overall)]
    for label, g in groups:
        cos, conf = g.cosine(), g.conflict_rate()
        cells = [f"{_fmt(cos[i, j].item(), '+.3f')} ({_fmt(conf[i, j].item(), '.2f') if report.signs else 'n/a'})"
                 for i, j in pairs]
        lines.append(f"{label:<10}" + "".join(f"{c:>{col + 2}}" for c in cells))
    return lines


def save_heatmap(report: InterferenceReport, path: Path) -> Path:
    """PNG: the overall cosine matrix, and cosine (and sign-conflict rate) per layer for every pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, pairs = len(report.names), report.pairs()
    labels = list(report.layers)
    panels = 1 + (1 if pairs else 0) + (1 if pairs and report.signs else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels + 1, max(3.5, 0.28 * len(labels) + 1.5)), squeeze=False)
    ax = axes[0][0]
    cos = report.overall.cosine().numpy()
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(k), report.names, rotation=45, ha="right")
    ax.set_yticks(range(k), report.names)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, _fmt(cos[i, j], ".2f"), ha="center", va="center", fontsize=8)
    ax.set_title("cosine, whole model")
    fig.colorbar(im, ax=ax, fraction=0.046)
    pair_names = [f"{report.names[i]}·{report.names[j]}" for i, j in pairs]
    if pairs:
        per_layer = [[g.cosine()[i, j].item() for i, j in pairs] for g in report.layers.values()]
        ax = axes[0][1]
        im = ax.imshow(per_layer, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(pairs)), pair_names, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title("cosine per layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if pairs and report.signs:
        per_layer = [[g.conflict_rate()[i, j].item() for i, j in pairs] for g in report.layers.values()]
        ax = axes[0][2]
        im = ax.imshow(per_layer, cmap="magma", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(pairs)), pair_names, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title("sign-conflict rate per layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_json(report: InterferenceReport) -> dict:
    """Plain numbers for --json (NaN becomes null)."""

    def clean(t: torch.Tensor) -> list:
        return [[None if x != x else x for x in row] for row in t.tolist()]

    def group(g: GroupStats) -> dict:
        return {"norms": g.norms().tolist(), "cosine": clean(g.cosine()),
                "sign_conflict_rate": clean(g.conflict_rate()) if report.signs else None}

    return {"packs": report.names, "overall": group(report.overall),
            "layers": {label: group(g) for label, g in report.layers.items()}}
