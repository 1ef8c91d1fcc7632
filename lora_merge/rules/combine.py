"""Merge rules: small pure functions that combine the ω-scaled deltas of one tensor.

Each rule takes the list of already-scaled float32 deltas that touch one
weight (one per pack, in pack order) and returns their combined delta; the fold
adds it to θG's tensor. Rules are registered by name in :data:`RULES`.

The rules follow ``peft.utils.merge_utils`` (TIES: Yadav et al. 2023; DARE:
Yu et al. 2024). Our deltas arrive already multiplied by ω, so each rule here
equals the PEFT function called on the scaled deltas with weights of 1. For
the linear, magnitude_prune and dare_linear rules that is the same as PEFT with
weights ω on the unscaled deltas; for ties and dare_ties the sign election sees
ω-scaled mass (PEFT elects on unscaled mass), which only differs when the ωk
differ. Exact formulas: docs/merge-rules.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lora_merge.core.errors import LoraMergeError


@dataclass(frozen=True)
class RuleOptions:
    """Settings shared by the rules (unused ones are ignored by a rule).

    ``density`` is the fraction of each delta's entries kept by the pruning
    rules, in (0, 1]; ``seed`` makes the DARE masks reproducible.
    """

    density: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Checked here, where a fold builds its options, so a bad value fails before anything is written.
        if not isinstance(self.density, (int, float)) or not 0.0 < self.density <= 1.0:
            raise LoraMergeError(f"--density {self.density!r} is outside (0, 1]: give the fraction of entries to keep, "
                                 "e.g. 0.5")
        if not isinstance(self.seed, int):
            raise LoraMergeError(f"--seed {self.seed!r} must be an integer")


Rule = Callable[[Sequence[torch.Tensor], RuleOptions, str], torch.Tensor]


def _check_shapes(deltas: Sequence[torch.Tensor], name: str) -> None:
    if not deltas:
        raise ValueError(f"{name}: a merge rule needs at least one delta")
    shapes = {tuple(d.shape) for d in deltas}
    if len(shapes) > 1:
        raise LoraMergeError(f"{name or 'a tensor'}: the packs give deltas of different shapes {sorted(shapes)}; "
                             "fold only packs made for the same model")


def linear(deltas: Sequence[torch.Tensor], opts: RuleOptions, name: str = "") -> torch.Tensor:
    """Task arithmetic: Σk ωk·τk (deltas arrive already scaled by ω)."""
    _check_shapes(deltas, name)
    return deltas[0] if len(deltas) == 1 else torch.stack(list(deltas)).sum(0)


def keep_top_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ⌊density·n⌋ entries of largest magnitude (PEFT's magnitude pruning).

    Equal to PEFT's top-k mask whenever no two magnitudes tie at the threshold.
    """
    if density >= 1.0:
        return delta
    k = int(density * delta.numel())
    if k == 0:
        return torch.zeros_like(delta)
    magnitude = delta.abs()
    # The k-th largest magnitude as a threshold: the same entries as PEFT's top-k mask without sorting out
    # k indices, which made torch.topk the slow step on large tensors (docs/benchmarks.md, "Figures the code
    # cites"). Entries tied exactly at the threshold are all kept (top-k would keep an arbitrary subset of them).
    threshold = kth_smallest(magnitude.reshape(-1).float(), delta.numel() - k + 1)
    return delta * (magnitude >= threshold)


RADIX_MIN = 1 << 16  # below this many values torch.kthvalue alone is as fast


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of a 1-D tensor of non-negative float32 values, exactly.

    Non-negative floats order like their bit patterns read as integers, so one counting pass over the top
    16 bits finds the bucket that holds the k-th value, and kthvalue runs on that bucket alone instead of on
    the whole tensor (docs/benchmarks.md, "Profiled first: where a fold's time goes", has the timing).
    """
    if values.numel() < RADIX_MIN:
        return torch.kthvalue(values, k).values
    high = (values.view(torch.int32) >> 16).to(torch.int64)
    below = torch.cumsum(torch.bincount(high, minlength=1 << 15), 0)
    bucket = int(torch.searchsorted(below, torch.tensor(k, device=below.device)))  # first with ≥ k values up to it
    before = int(below[bucket - 1]) if bucket > 0 else 0
    return torch.kthvalue(values[high == bucket], k - before).values


def tensor_seed(seed: int, name: str) -> int:
    """A seed for one tensor's DARE masks: stable across runs, machines and tensor order."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class KeepDraws:
    """DARE's keep/drop draws for one tensor: torch.bernoulli's, in its order.

    ``torch.bernoulli(torch.full(shape, p), generator=gen)`` draws one 32-bit word per entry from ``gen`` (an
    MT19937 stream) and keeps the entry when the word's low 24 bits, read as a fraction, are below p (float32).
    The same stream runs here in a compiled loop (:mod:`lora_merge.rules.kernels`) that tests each word as it makes
    it, in one pass with no float tensors (bernoulli reads a float tensor of p and writes floats; the cost per
    draw of each way: docs/benchmarks.md, "The pruning rules by row tiles, several packs, the fold's whole
    process" and "The pruning rules' hot loops, compiled with numba"), and any number of draws per call lands
    where bernoulli's would (tests/test_rules_combine.py compares them).
    """

    def __init__(self, seed: int, density: float):
        from lora_merge.rules import kernels  # numba: only the DARE rules load it

        self._draw = kernels.draw_keeps
        self.stream = kernels.MT19937(seed)
        self.bound = math.ceil(float(np.float32(density)) * (1 << 24))  # low 24 bits < bound ⇔ u < p

    def draw(self, keep: np.ndarray) -> None:
        """keep (1-D bool, contiguous) ← the next len(keep) draws: True where the entry is kept."""
        self._draw(self.stream.words, self.stream.position, self.bound, keep.view(np.uint8))


def drop_and_rescale(deltas: Sequence[torch.Tensor], density: float, seed: int, name: str) -> list[torch.Tensor]:
    """DARE: keep each entry with probability ``density`` and divide survivors by ``density``.

    The masks are torch.bernoulli's from one CPU generator seeded by :func:`tensor_seed`, drawn pack after
    pack (:class:`KeepDraws`), so a tensor's masks do not depend on the device or on which other tensors
    were folded before it.
    """
    if density >= 1.0:
        return list(deltas)
    draws = KeepDraws(tensor_seed(seed, name), density)
    out = []
    for d in deltas:
        keep = np.empty(d.numel(), dtype=np.bool_)
        draws.draw(keep)
        mask = torch.from_numpy(keep).view(tuple(d.shape)).to(device=d.device, dtype=d.dtype)
        out.append(d * mask / density)
    return out


def elect_and_average(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """TIES' sign election by total mass and disjoint mean of the entries that agree with it.

    Accumulated delta by delta rather than on a stacked copy (and its sign tensor): the same sums in the
    same order, so the same bits, in about half the memory of the stacked form (3 deltas: 6 tensors, not 10+).
    """
    mass = deltas[0].clone()
    for d in deltas[1:]:
        mass += d
    positive = mass >= 0  # the elected sign: + where the total mass is ≥ 0
    total, count = torch.zeros_like(mass), torch.zeros_like(mass)
    for d in deltas:
        agree = torch.where(positive, d > 0, d < 0)  # pruned (zero) entries never agree, so they are not counted
        total += d * agree
        count += agree
    return total / count.clamp_(min=1)


def magnitude_prune(deltas: Sequence[torch.Tensor], opts: RuleOptions, name: str = "") -> torch.Tensor:
    """Keep each delta's top-density entries by magnitude, then sum."""
    _check_shapes(deltas, name)
    return linear([keep_top_magnitude(d, opts.density) for d in deltas], opts, name)


def ties(deltas: Sequence[torch.Tensor], opts: RuleOptions, name: str = "") -> torch.Tensor:
    """TIES: trim each delta to its top-density entries, elect a sign per entry, average the agreeing ones."""
    _check_shapes(deltas, name)
    return elect_and_average([keep_top_magnitude(d, opts.density) for d in deltas])


def dare_linear(deltas: Sequence[torch.Tensor], opts: RuleOptions, name: str = "") -> torch.Tensor:
    """DARE then sum: random drop with probability 1 − density, survivors rescaled by 1/density."""
    _check_shapes(deltas, name)
    return linear(drop_and_rescale(deltas, opts.density, opts.seed, name), opts, name)


def dare_ties(deltas: Sequence[torch.Tensor], opts: RuleOptions, name: str = "") -> torch.Tensor:
    """DARE then TIES' sign election and disjoint mean."""
    _check_shapes(deltas, name)
    return elect_and_average(drop_and_rescale(deltas, opts.density, opts.seed, name))


RULES: dict[str, Rule] = {
    "linear": linear,
    "ties": ties,
    "dare_linear": dare_linear,
    "dare_ties": dare_ties,
    "magnitude_prune": magnitude_prune,
}

# The paper's interpolation variants build their own vectors (lora_merge.fold.variants) and then only sum them.
VARIANT_METHODS: dict[str, Rule] = {"linear_interp": linear, "wise_ft": linear}


# Rules that are the plain sum of the ω-scaled deltas. For these the streamed fold does not call the rule on whole
# deltas: it computes θG + Σ ωk·Bk·Ak row tile by row tile (lora_merge.fold.stream.merge_linear, the fast kernel),
# which is the same sum (tests/test_rules_combine.py checks the kernel against ``linear`` here).
SUM_RULES = frozenset({"linear"})


def streams_as_sum(name: str) -> bool:
    """Whether the fold may compute ``--method name`` with the tiled sum kernel instead of calling the rule."""
    return name in SUM_RULES


def method_names() -> list[str]:
    """Every value ``--method`` accepts: the rules, then the variants."""
    return list(RULES) + list(VARIANT_METHODS)


def get_rule(name: str) -> Rule:
    """The rule for a ``--method`` name (a variant maps to the sum of the vectors it built)."""
    rule = RULES.get(name) or VARIANT_METHODS.get(name)
    if rule is None:
        raise LoraMergeError(f"unknown merge method {name!r}; choose one of: {', '.join(method_names())}")
    return rule
