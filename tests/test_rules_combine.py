"""Merge rules against peft.utils.merge_utils (the peer implementation) on the same dense inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from peft.utils import merge_utils

from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of
from lora_merge.rules.combine import RULES, KeepDraws, RuleOptions, get_rule, kth_smallest, tensor_seed

NAME = "model.layers.0.self_attn.q_proj.weight"


def random_deltas(k: int = 3, shape=(16, 24), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(k)]


def ones(k: int) -> torch.Tensor:
    return torch.ones(k)


@pytest.mark.parametrize("density", [0.1, 0.35, 0.5, 0.9, 1.0])
def test_deterministic_rules_equal_peft_on_scaled_deltas(density):
    omegas = [0.3, 0.8, 1.7]
    taus = random_deltas()
    scaled = [w * t for w, t in zip(omegas, taus, strict=True)]
    opts = RuleOptions(density=density)
    k = len(taus)
    expected = {
        "linear": merge_utils.task_arithmetic(scaled, ones(k)),
        "magnitude_prune": merge_utils.magnitude_prune(scaled, ones(k), density),
        "ties": merge_utils.ties(scaled, ones(k), density, majority_sign_method="total"),
    }
    for name, ref in expected.items():
        assert torch.allclose(get_rule(name)(scaled, opts, NAME), ref, atol=1e-6, rtol=0), name
    # pruning by magnitude is invariant to a positive ω, so these also equal PEFT with weights ω on unscaled τ
    w = torch.tensor(omegas)
    assert torch.allclose(RULES["linear"](scaled, opts, NAME), merge_utils.task_arithmetic(taus, w), atol=1e-6)
    assert torch.allclose(RULES["magnitude_prune"](scaled, opts, NAME),
                          merge_utils.magnitude_prune(taus, w, density), atol=1e-6)


def test_ties_equals_peft_weighted_when_weights_are_equal():
    taus = random_deltas(seed=4)
    scaled = [0.6 * t for t in taus]
    ours = RULES["ties"](scaled, RuleOptions(density=0.4), NAME)
    assert torch.allclose(ours, merge_utils.ties(taus, torch.full((3,), 0.6), 0.4), atol=1e-6)


def test_ties_by_hand_on_a_tiny_example():
    a = torch.tensor([3.0, -1.0, 0.5, -2.0])
    b = torch.tensor([-1.0, -2.0, 4.0, 1.0])
    # density 0.5 keeps a: 3, -2 ; b: -2, 4 → sums per entry: 3, -2, 4, -2 → signs + - + -
    out = RULES["ties"]([a, b], RuleOptions(density=0.5), "x")
    assert torch.equal(out, torch.tensor([3.0, -2.0, 4.0, -2.0]))
    # density 1: entry 0 elects + (3 − 1 > 0) and keeps only a's 3; entry 1 averages −1, −2
    out = RULES["ties"]([a, b], RuleOptions(density=1.0), "x")
    assert torch.allclose(out, torch.tensor([3.0, -1.5, (0.5 + 4.0) / 2, -2.0]))


@pytest.mark.parametrize("rule,peft_fn", [("dare_linear", merge_utils.dare_linear), ("dare_ties", merge_utils.dare_ties)])
@pytest.mark.parametrize("density", [0.2, 0.7])
def test_dare_equals_peft_given_the_same_masks(rule, peft_fn, density):
    scaled = [w * t for w, t in zip([0.5, 1.2, 0.9], random_deltas(seed=2), strict=True)]
    ours = RULES[rule](scaled, RuleOptions(density=density, seed=11), NAME)
    # PEFT draws its masks from the global generator pack after pack; seed it as our rule seeds its own
    torch.manual_seed(tensor_seed(11, NAME))
    ref = peft_fn(scaled, ones(3), density)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [77, tensor_seed(3, NAME)])  # a small seed, and a 63-bit one as the fold uses
@pytest.mark.parametrize("density", [0.5, 0.3, 0.999, 1e-7])
def test_keep_draws_are_bernoullis_own_in_any_chunking(density, seed):
    """KeepDraws runs its own MT19937 stream, regenerated every 624 words; in calls of any size, across those
    blocks, it must give exactly the masks torch.bernoulli draws from a generator seeded alike, one call per
    tensor."""
    sizes = [1, 7, 1000, 3, 65537, 2, 10, 624, 623, 1249]
    g = torch.Generator().manual_seed(seed)
    expected = [torch.bernoulli(torch.full((n,), density), generator=g).bool().numpy() for n in sizes]
    draws = KeepDraws(seed, density)
    for n, ref in zip(sizes, expected, strict=True):
        keep = np.empty(n, dtype=np.bool_)
        for i in range(0, n, 999):  # and each tensor's draws split into chunks
            draws.draw(keep[i:i + 999])
        assert np.array_equal(keep, ref), n


def test_dare_keeps_about_density_and_rescales_exactly():
    delta = torch.randn(200, 300, generator=torch.Generator().manual_seed(0))
    out = RULES["dare_linear"]([delta], RuleOptions(density=0.3, seed=5), NAME)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.allclose(out[kept], delta[kept] / 0.3, atol=0, rtol=1e-6)
    again = RULES["dare_linear"]([delta], RuleOptions(density=0.3, seed=5), NAME)
    assert torch.equal(out, again)
    other_seed = RULES["dare_linear"]([delta], RuleOptions(density=0.3, seed=6), NAME)
    other_name = RULES["dare_linear"]([delta], RuleOptions(density=0.3, seed=5), "model.layers.1.mlp.up_proj.weight")
    assert not torch.equal(out, other_seed) and not torch.equal(out, other_name)
    assert torch.equal(RULES["dare_linear"]([delta], RuleOptions(density=1.0), NAME), delta)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_density_outside_unit_interval_is_refused(density):
    with pytest.raises(LoraMergeError, match="density"):
        RuleOptions(density=density)


def test_unknown_rule_and_mismatched_shapes():
    with pytest.raises(LoraMergeError, match="unknown merge method 'sum'"):
        get_rule("sum")
    for rule in RULES.values():
        with pytest.raises(LoraMergeError, match="different shapes"):
            rule([torch.zeros(2, 3), torch.zeros(3, 2)], RuleOptions(density=0.5), NAME)


@pytest.fixture
def three_packs(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    packs = [make_lora_pack(pre, pre_dir, tmp_path / "reg" / n, n, seed=i + 1, target_modules=["q_proj", "down_proj"])
             for i, n in enumerate(["safety", "coding", "science"])]
    return pre, pre_dir, gen_dir, packs


def peft_deltas(pre, pack) -> dict[str, torch.Tensor]:
    merged = PeftModel.from_pretrained(copy.deepcopy(pre), pack).merge_and_unload().state_dict()
    base = pre.state_dict()
    return {k: merged[k] - base[k] for k in base if not torch.equal(merged[k], base[k])}


@pytest.mark.parametrize("method", ["ties", "dare_ties", "magnitude_prune"])
def test_fold_with_rule_equals_peft_rule_on_peft_deltas(tmp_path, three_packs, method):
    pre, _pre_dir, gen_dir, packs = three_packs
    omegas = [0.4, 0.7, 1.1]
    out = tmp_path / f"m-{method}"
    fold(FoldRequest(general=gen_dir, packs=[str(p) for p in packs], out=out, weights=omegas, method=method,
                     density=0.5, seed=3, progress=False))
    deltas = [peft_deltas(pre, p) for p in packs]
    g, ours = state_of(gen_dir), state_of(out)
    assert set(deltas[0]) == {k for k in g if not torch.equal(g[k], ours[k])}
    for k in deltas[0]:
        scaled = [w * d[k] for w, d in zip(omegas, deltas, strict=True)]
        if method == "ties":
            ref = merge_utils.ties(scaled, ones(3), 0.5)
        elif method == "magnitude_prune":
            ref = merge_utils.magnitude_prune(scaled, ones(3), 0.5)
        else:
            torch.manual_seed(tensor_seed(3, k))
            ref = merge_utils.dare_ties(scaled, ones(3), 0.5)
        assert torch.allclose(ours[k], g[k] + ref, atol=1e-5, rtol=0), k


def test_bad_fold_requests_write_nothing(tmp_path, three_packs):
    pre, pre_dir, gen_dir, packs = three_packs
    big = pico_model("llama", hidden=64)
    big_dir = save_model(big, tmp_path / "big")
    other = make_lora_pack(big, big_dir, tmp_path / "reg" / "big", "big", seed=9, target_modules=["q_proj"])
    plain = make_lora_pack(big, None, tmp_path / "reg" / "plain", "plain", seed=9, target_modules=["q_proj"],
                           manifest=False)  # no recorded base: caught by the shape check instead
    out = tmp_path / "never"
    cases = [
        (dict(method="nonsense"), "unknown merge method"),
        (dict(method="ties", density=0.0), "density"),
        (dict(method="dare_linear", density=1.2), "density"),
    ]
    for kw, match in cases:
        with pytest.raises(LoraMergeError, match=match):
            fold(FoldRequest(general=gen_dir, packs=[str(p) for p in packs], out=out, weights=[0.5] * 3,
                             progress=False, **kw))
    for bad, match in [(other, "differs from the general model"), (plain, "shape")]:
        with pytest.raises(LoraMergeError, match=match):
            fold(FoldRequest(general=gen_dir, packs=[str(packs[0]), str(bad)], out=out, weights=[0.5, 0.5],
                             method="ties", density=0.5, progress=False))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_cli_fold_ties(tmp_path, three_packs):
    from lora_merge.cli import main

    _pre, _pre_dir, gen_dir, _packs = three_packs
    args = ["fold", "--general", str(gen_dir), "--adapters", "safety,coding,science", "--adapters-dir",
            str(tmp_path / "reg"), "--weights", "0.3,0.3,0.3", "--method", "ties", "--density", "0.5",
            "--out", str(tmp_path / "cli-out")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    record = (tmp_path / "cli-out" / "lora_merge.json").read_text()
    assert '"method": "ties"' in record and '"density": 0.5' in record
    bad = CliRunner().invoke(main, args[:-1] + [str(tmp_path / "cli-bad"), "--density", "2"])
    assert bad.exit_code == 2 and "density" in bad.output and not (tmp_path / "cli-bad").exists()


@pytest.mark.parametrize("n", [10, 70_000, 300_001])
def test_kth_smallest_equals_kthvalue(n):
    """The radix shortcut against torch.kthvalue: ties, zeros, subnormals, huge values, every kind of k."""
    g = torch.Generator().manual_seed(n)
    v = torch.randn(n, generator=g).abs()
    v[: n // 10] = 0.0  # a block of exact zeros (pruned entries)
    v[n // 10: n // 5] = v[n // 10]  # a block of ties
    v[-3:] = torch.tensor([1e-40, 3e38, 1.5])  # a subnormal and a huge one
    for k in sorted({1, 2, n // 10, n // 10 + 1, n // 5, n // 2, n - 1, n}):
        assert kth_smallest(v, k) == torch.kthvalue(v, k).values, k


def test_the_folds_tiled_sum_kernel_is_the_linear_rule():
    """The streamed fold computes SUM_RULES with stream.merge_linear; it must equal θ + combine.linear(deltas)."""
    from lora_merge.fold import stream
    from lora_merge.rules.combine import streams_as_sum

    assert streams_as_sum("linear") and not streams_as_sum("ties")
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(40, 24, generator=g)
    b1, a1 = torch.randn(40, 3, generator=g), torch.randn(3, 24, generator=g)
    dense = torch.randn(40, 24, generator=g)
    out = torch.empty_like(theta)
    stream.merge_linear(theta, [("lowrank", (b1, a1)), ("dense", dense)], out, torch.device("cpu"),
                        torch.empty(stream.tile_elements((40, 24))))
    expected = theta + get_rule("linear")([b1 @ a1, dense], RuleOptions(), "w")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
