"""The demo's verdict: did a skill transfer, judged by the rule its config wrote down before the run.

The rule (:class:`lora_merge.study.config.TransferRule`) compares PTM at ω = |D|/|G| with θG on the same items,
one paired interval per endpoint (Newcombe's for paired proportions, :mod:`lora_merge.evaluate.intervals`):

- ``skill``: the gain on the skill's training forms: lower bound > 0 and point gain ≥ the bar;
- ``general``: non-inferior: the lower bound of its change ≥ −margin;
- ``chat``, when the rule sets ``chat_margin`` and the chat set was scored: chat retained non-inferior: the
  lower bound of the change in θpre's answers' mean log-likelihood per token ≥ −margin nats (a paired
  bootstrap, :func:`~lora_merge.evaluate.intervals.paired_loglik_interval`);
- safety only, ``lookalike_unseen``: lookalikes of categories never trained on still answered: the Wilson
  lower bound of the share answered ≥ the floor.

``skill_heldout`` (forms never trained on), ``lookalike`` (the trained categories' lookalikes) and
``chat_answered`` (ordinary requests answered) are measured and reported beside the verdict, not part of it.
Items are paired by :func:`lora_merge.evaluate.paired.pair_items`, the project's one pairing. θG itself is
checked against θpre the same way (:func:`theta_g_check`), before anything is folded into it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from statistics import NormalDist

from lora_merge.core.errors import LoraMergeError
from lora_merge.evaluate.intervals import Interval, paired_loglik_interval, paired_proportion_interval, wilson_interval
from lora_merge.evaluate.paired import pair_items
from lora_merge.study.config import TransferRule
from lora_merge.study.scores import ScoreStore
from lora_merge.study.tasks import SkillSets

REFERENCE = "θG"
PRE = "θpre"  # θpre's scores on the sets every model gets (meta kind "θpre"), where the chat sets exist
CHAT, CHAT_ANSWERED = "chat", "chat_answered"
PROBE, PROBE_HARMFUL = "probe", "probe_harmful"  # the probe's ordinary + lookalike (compliance) and harmful sets
CHAT_DIGITS = 3  # nats per token; the 0/1 endpoints are points, to 0.1


def endpoint_sets(sets: SkillSets) -> dict[str, str]:
    """Endpoint → the eval set that measures it, for one skill's own sets (the sets every model gets aside)."""
    named = {"skill": sets.in_form, "skill_heldout": sets.held_out, "lookalike": sets.lookalike,
             "lookalike_unseen": sets.lookalike_unseen}
    return {k: v for k, v in named.items() if v}


def item_samples(store: ScoreStore, label: str, set_name: str) -> list[dict] | None:
    """Every item's sample of a scored set as the store keeps it (``samples``: eval's per-item rows with ``id``,
    ``index``, ``output``, and ``correct`` or ``loss`` and ``tokens``); None when it keeps none."""
    entry = store.data.get(label, {}).get("sets", {}).get(set_name)
    samples = None if entry is None else entry.get("samples")
    return list(samples) if samples else None


def _outcome_items(store: ScoreStore, label: str, set_name: str) -> list[dict] | None:
    """A 0/1 set's kept ids and outcomes as minimal samples in file order, for :func:`pair_items`."""
    got = store.outcomes(label, set_name)
    if got is None:
        return None
    return [{"id": i, "index": k, "correct": bool(o)} for k, (i, o) in enumerate(zip(*got, strict=True))]


def _pairs(store: ScoreStore, reference: str, label: str, set_name: str,
           items: Callable[[ScoreStore, str, str], list[dict] | None]) -> list[tuple[dict, dict]] | None:
    base, cand = items(store, reference, set_name), items(store, label, set_name)
    if base is None or cand is None:
        return None
    try:
        return pair_items(set_name, base, cand, sides=(reference, label))
    except LoraMergeError as e:
        raise LoraMergeError(f"{e}; rerun the demo to score {label} and {reference} on the same eval files") from e


def _rounded(iv: Interval, digits: int) -> dict:
    return {"delta": round(iv.delta, digits), "low": round(iv.low, digits), "high": round(iv.high, digits), "n": iv.n}


def proportion_ci(store: ScoreStore, reference: str, label: str, set_name: str, confidence: float) -> dict | None:
    """``label`` − ``reference`` on a 0/1 set, paired item by item: {delta, low, high, n} in points (Newcombe)."""
    pairs = _pairs(store, reference, label, set_name, _outcome_items)
    if not pairs:
        return None
    iv = paired_proportion_interval([b["correct"] for b, _ in pairs], [c["correct"] for _, c in pairs], confidence)
    return _rounded(iv, 1)


def chat_ci(store: ScoreStore, reference: str, label: str, confidence: float) -> dict | None:
    """Chat retained, ``label`` − ``reference``: the change in the token-weighted mean log-likelihood per token of
    θpre's answers, {delta, low, high, n} in nats per token (positive: more likely); None without both sides'
    per-item losses."""
    pairs = _pairs(store, reference, label, CHAT, item_samples)
    if not pairs or not all(isinstance(s.get(k), (int, float)) for p in pairs for s in p for k in ("loss", "tokens")):
        return None
    base, cand = ([p[k] for p in pairs] for k in (0, 1))
    iv = paired_loglik_interval([s["loss"] for s in base], [s["tokens"] for s in base],
                                [s["loss"] for s in cand], [s["tokens"] for s in cand], confidence=confidence)
    return _rounded(iv, CHAT_DIGITS)


def general_endpoints(store: ScoreStore, label: str, confidence: float, reference: str = REFERENCE) -> dict[str, dict]:
    """``label`` against ``reference`` on the sets every model gets that were scored: general, chat, chat answered."""
    out = {"general": proportion_ci(store, reference, label, "general", confidence),
           CHAT: chat_ci(store, reference, label, confidence),
           CHAT_ANSWERED: proportion_ci(store, reference, label, CHAT_ANSWERED, confidence)}
    return {k: v for k, v in out.items() if v is not None}


def paired_endpoints(store: ScoreStore, label: str, sets: SkillSets, confidence: float) -> dict[str, dict]:
    """``label`` against θG on each endpoint, paired item by item: {endpoint: {delta, low, high, n}}, in points
    (chat: nats per token); the sets every model gets first."""
    out = general_endpoints(store, label, confidence)
    for endpoint, set_name in endpoint_sets(sets).items():
        iv = proportion_ci(store, REFERENCE, label, set_name, confidence)
        if iv is not None:
            out[endpoint] = iv
    return out


def theta_g_check(store: ScoreStore, rule: TransferRule, openings: Collection[str] = frozenset()) -> dict | None:
    """θG against θpre before anything is folded: general, chat and chat answered as :func:`paired_endpoints`
    gives them, θG's template share on the probe (``template``, where probed), and ``holds``: chat's lower bound
    ≥ −``chat_margin`` and the template share ≤ ``template_ceiling``, each where the rule sets it and it was
    measured (None when neither could be judged); ``openings``: G's training answers' shapes, a reply in one of
    which is a template (:func:`lora_merge.evaluate.template_probe.trained_openings`). None when θpre was not
    scored."""
    from lora_merge.evaluate.template_probe import summarise_probe

    if PRE not in store.data:
        return None
    ci = general_endpoints(store, REFERENCE, rule.confidence, reference=PRE)
    chat, checks = ci.get(CHAT), []
    if rule.chat_margin is not None and chat is not None:
        checks.append(chat["low"] >= -rule.chat_margin)
    probe = probe_samples(store, REFERENCE)
    if probe:
        share = round(summarise_probe(probe, openings).template_share, 1)
        ci["template"] = share
        if rule.template_ceiling is not None:
            checks.append(share <= rule.template_ceiling)
    return {**ci, "holds": all(checks) if checks else None}


def probe_samples(store: ScoreStore, label: str) -> list[dict]:
    """``label``'s samples of the whole template probe (both its sets); empty when it was not probed."""
    return [*(item_samples(store, label, PROBE) or []), *(item_samples(store, label, PROBE_HARMFUL) or [])]


def share_interval(store: ScoreStore, label: str, set_name: str, confidence: float) -> dict | None:
    """The share of a set's items ``label`` got right, with its Wilson interval, in points."""
    got = store.outcomes(label, set_name)
    if got is None or not got[1]:
        return None
    n, k = len(got[1]), sum(got[1])
    low, high = wilson_interval(k, n, NormalDist().inv_cdf(0.5 + confidence / 2.0))
    return {"share": round(100.0 * k / n, 1), "low": round(100.0 * low, 1), "high": round(100.0 * high, 1), "n": n}


def heuristic_omega(demo, skill: str) -> float:
    """ω = |D|/|G| of a skill (rounded as the summary rows are)."""
    counts = demo.data.files.counts
    return round(counts[skill] / counts["general"], 4)


def ptm_label(store: ScoreStore, skill: str, omega: float) -> str | None:
    """The store's label of PTM of ``skill`` at ``omega`` (rounded to 4 places), None when it was not scored."""
    return next((label for label, e in store.data.items() if e["meta"].get("kind") == "ptm"
                 and e["meta"].get("skill") == skill and round(e["meta"]["weights"][skill], 4) == omega), None)


@dataclass(frozen=True)
class Check:
    """One criterion of the rule: what it asks, what was measured, and whether it holds."""

    asks: str
    measured: str
    holds: bool


@dataclass(frozen=True)
class Verdict:
    """A skill's verdict under the rule: transferred only when every check holds."""

    skill: str
    omega: float
    checks: list[Check]

    @property
    def transferred(self) -> bool:
        return bool(self.checks) and all(c.holds for c in self.checks)

    def to_dict(self) -> dict:
        return {"transferred": self.transferred, "omega": self.omega,
                "checks": [{"asks": c.asks, "measured": c.measured, "holds": c.holds} for c in self.checks]}


def format_ci(e: dict, digits: int = 1) -> str:
    """Δ [low, high], n = … with signs, to ``digits`` places."""
    return f"{e['delta']:+.{digits}f} [{e['low']:+.{digits}f}, {e['high']:+.{digits}f}], n = {e['n']}"


def judge(skill: str, omega: float, rule: TransferRule, ci: dict[str, dict], unseen_share: dict | None) -> Verdict:
    """The rule applied to PTM's paired intervals against θG (``ci``) and, for safety, the unseen lookalike share.

    The chat check is there only when the rule sets ``chat_margin`` and ``ci`` has chat (the set was scored)."""
    if "skill" not in ci or "general" not in ci:
        raise LoraMergeError(f"{skill}: no per-item outcomes for the skill or general set; the verdict needs both")
    s, g = ci["skill"], ci["general"]
    checks = [Check(f"skill gain ≥ {rule.skill_gain:g} points with its lower bound > 0", format_ci(s),
                    s["delta"] >= rule.skill_gain and s["low"] > 0),
              Check(f"general non-inferior: lower bound ≥ −{rule.general_margin:g} points", format_ci(g),
                    g["low"] >= -rule.general_margin)]
    if rule.chat_margin is not None and CHAT in ci:
        c = ci[CHAT]
        checks.append(Check(f"chat retained non-inferior: lower bound ≥ −{rule.chat_margin:g} nats/token",
                            format_ci(c, CHAT_DIGITS), c["low"] >= -rule.chat_margin))
    if unseen_share is not None:
        u = unseen_share
        checks.append(Check(f"lookalikes of unseen categories answered: lower bound ≥ {rule.lookalike_floor:g} %",
                            f"{u['share']:.1f} % [{u['low']:.1f}, {u['high']:.1f}], n = {u['n']}",
                            u["low"] >= rule.lookalike_floor))
    return Verdict(skill, omega, checks)


def rule_text(rule: TransferRule) -> str:
    """The rule in one sentence, as the closing screen prints it before the verdicts."""
    chat = ("" if rule.chat_margin is None else
            f", chat retained (the mean log-likelihood per token of θpre's own answers to held-out ordinary "
            f"requests) has a lower bound ≥ −{rule.chat_margin:g} nats/token")
    return (f"A skill transferred when PTM at ω = |D|/|G| gains ≥ {rule.skill_gain:g} points on its training forms "
            f"with the {100 * rule.confidence:g} % paired interval's lower bound > 0, general's lower bound is "
            f"≥ −{rule.general_margin:g} points{chat}, and (safety) lookalikes of never-trained categories are "
            f"answered with a lower bound ≥ {rule.lookalike_floor:g} %. Intervals: Newcombe's paired interval "
            "against θG (Wilson's for a share"
            + ("; for chat a paired bootstrap of items" if rule.chat_margin is not None else "") + ").")
