"""The pruning rules by row tiles (lora_merge/fold/tiled_rules.py) against PEFT's merge_utils and torch's own selection.

The tiles here are small (a few rows), so every tensor is merged in several tiles plus a ragged last one and the
thresholds and DARE masks have to be carried across tiles.
"""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils
from safetensors.torch import save_file

import lora_merge.fold.magnitude_select as select
import lora_merge.fold.stream as stream_module
import lora_merge.fold.tiled_rules as tiled
from lora_merge.fold.delta_rows import DeltaRows
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.io.tensors import SafetensorsFile
from lora_merge.pack.task_vector import LowRankDelta, StoredDelta
from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of
from lora_merge.rules.combine import RULES, RuleOptions, tensor_seed

NAME = "model.layers.3.mlp.up_proj.weight"
PEFT_RULES = {"ties": merge_utils.ties, "magnitude_prune": merge_utils.magnitude_prune,
              "dare_ties": merge_utils.dare_ties, "dare_linear": merge_utils.dare_linear}


def ragged_tiles(rows: int, per: int = 16) -> list[tuple[int, int]]:
    starts = list(range(0, rows - per, per))
    return [(s, s + per) for s in starts[:-1]] + [(starts[-1], rows)]


def lora_sources(tmp_path, k: int, shape: tuple[int, int], rank: int = 4, seed: int = 0):
    """k LoRA packs' factors in a safetensors file, bound as the fold binds them: ω_k · (s·B_k) @ A_k."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(k):
        tensors[f"a{i}"] = torch.randn(rank, shape[1], generator=g)
        tensors[f"b{i}"] = torch.randn(shape[0], rank, generator=g)
    save_file(tensors, tmp_path / "factors.safetensors")
    src = SafetensorsFile(tmp_path / "factors.safetensors")
    omegas = [0.4 + 0.3 * i for i in range(k)]
    terms = [[(w, LowRankDelta(src, f"a{i}", f"b{i}", 0.5, False, shape))] for i, w in enumerate(omegas)]
    # the oracle's own deltas: the same formula, computed here on whole tensors
    deltas = [w * ((tensors[f"b{i}"] * 0.5) @ tensors[f"a{i}"]) for i, w in enumerate(omegas)]
    return terms, deltas


def run_tiled(theta, terms, method, opts, tiles):
    out = torch.empty(max(r1 - r0 for r0, r1 in tiles) * theta.shape[1], dtype=torch.float32)
    result = torch.empty(theta.shape)
    for r0, rows in tiled.pruned_tiles(theta, terms, method, opts, NAME, tiles, out, select.Scratch()):
        result[r0:r0 + rows.shape[0]] = rows
    return result


@pytest.mark.parametrize("method", list(PEFT_RULES))
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("density", [0.05, 0.5, 0.93, 1.0])
def test_tiled_rules_equal_peft(tmp_path, method, k, density):
    shape = (150, 72)
    terms, deltas = lora_sources(tmp_path, k, shape, seed=k)
    theta = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    opts = RuleOptions(density=density, seed=7)
    ours = run_tiled(theta, terms, method, opts, ragged_tiles(shape[0]))
    torch.manual_seed(tensor_seed(7, NAME))  # PEFT draws DARE masks from the global generator, pack after pack
    ref = theta + PEFT_RULES[method](deltas, torch.ones(k), density)
    assert_close_in_ulps(ours, ref, deltas, density)


def assert_close_in_ulps(ours, ref, deltas, density):
    """Within a few float32 ulps of the largest term (after DARE's 1/p): the tiles fold ω·s (and 1/p) into B
    before the product, PEFT multiplies after it, so the two round differently."""
    largest = max(float(d.abs().max()) for d in deltas) / min(density, 1.0)
    torch.testing.assert_close(ours, ref, atol=8 * torch.finfo(torch.float32).eps * largest * len(deltas), rtol=0)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("tile_rows", [7, 64])
def test_dare_masks_follow_the_stream_across_odd_sizes(tmp_path, method, tile_rows):
    """Odd tensor sizes and odd tiles (the last pack's masks are drawn tile by tile, the others ahead) must still
    give bernoulli's masks."""
    shape = (149, 73)  # an odd number of entries per pack
    terms, deltas = lora_sources(tmp_path, 3, shape, seed=4)
    theta = torch.zeros(shape)
    ours = run_tiled(theta, terms, method, RuleOptions(density=0.3, seed=2), ragged_tiles(shape[0], tile_rows))
    torch.manual_seed(tensor_seed(2, NAME))
    assert_close_in_ulps(ours, PEFT_RULES[method](deltas, torch.ones(3), 0.3), deltas, 0.3)


@pytest.mark.parametrize("kind", ["dense", "transposed", "two terms"])
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_packs_that_are_not_one_lora_product(tmp_path, kind, method):
    """Dense τ (extracted packs), transposed LoRA (embeddings, Conv1D) and a weight with two terms go through the
    same tiles (ω applied after the product there, as TaskVector.delta applies it)."""
    shape, g = (96, 40), torch.Generator().manual_seed(8)
    tensors = {f"t{i}": torch.randn(shape, generator=g) for i in range(2)}
    tensors.update({f"a{i}": torch.randn(3, shape[0], generator=g) for i in range(2)})
    tensors.update({f"b{i}": torch.randn(shape[1], 3, generator=g) for i in range(2)})
    save_file(tensors, tmp_path / "terms.safetensors")
    src = SafetensorsFile(tmp_path / "terms.safetensors")
    omegas = [0.6, 1.3]
    if kind == "dense":
        terms = [[(w, StoredDelta(src, f"t{i}", shape))] for i, w in enumerate(omegas)]
        deltas = [w * tensors[f"t{i}"] for i, w in enumerate(omegas)]
    elif kind == "transposed":
        terms = [[(w, LowRankDelta(src, f"a{i}", f"b{i}", 0.5, True, shape))] for i, w in enumerate(omegas)]
        deltas = [w * ((tensors[f"b{i}"] * 0.5) @ tensors[f"a{i}"]).T for i, w in enumerate(omegas)]
    else:
        terms = [[(w, StoredDelta(src, f"t{i}", shape)), (w, LowRankDelta(src, f"a{i}", f"b{i}", 0.5, True, shape))]
                 for i, w in enumerate(omegas)]
        deltas = [w * tensors[f"t{i}"] + w * ((tensors[f"b{i}"] * 0.5) @ tensors[f"a{i}"]).T
                  for i, w in enumerate(omegas)]
    theta = torch.zeros(shape)
    ours = run_tiled(theta, terms, method, RuleOptions(density=0.4, seed=1), ragged_tiles(shape[0], 16))
    torch.manual_seed(tensor_seed(1, NAME))
    assert_close_in_ulps(ours, PEFT_RULES[method](deltas, torch.ones(2), 0.4), deltas, 0.4)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_a_nan_in_a_pack_stays_nan_as_in_combine(tmp_path, method):
    """A corrupt entry must reach the output as NaN (the fold's check then refuses it), not vanish in the trim or
    the election: NaN where combine's rule on the whole deltas puts it. (Elsewhere the NaN pack's trimming threshold
    may differ by one entry: combine's kthvalue ranks NaN, the tiles do not; the fold refuses that output anyway.)"""
    shape = (96, 40)
    g = torch.Generator().manual_seed(2)
    tensors = {f"t{i}": torch.randn(shape, generator=g) for i in range(3)}
    tensors["t1"][5, 7] = float("nan")
    save_file(tensors, tmp_path / "nan.safetensors")
    src = SafetensorsFile(tmp_path / "nan.safetensors")
    terms = [[(1.0, StoredDelta(src, f"t{i}", shape))] for i in range(3)]
    opts = RuleOptions(density=0.5, seed=4)
    ours = run_tiled(torch.zeros(shape), terms, method, opts, ragged_tiles(shape[0], 16))
    ref = RULES[method]([tensors[f"t{i}"] for i in range(3)], opts, NAME)
    assert torch.isnan(ours[5, 7]) and torch.equal(torch.isnan(ours), torch.isnan(ref))


def test_every_entry_is_trimmed_when_density_keeps_none(tmp_path):
    terms, _ = lora_sources(tmp_path, 2, (64, 40))
    theta = torch.randn(64, 40)
    out = run_tiled(theta, terms, "ties", RuleOptions(density=1e-4), ragged_tiles(64, 8))  # int(0.256) = 0 kept
    assert torch.equal(out, theta)


def dense_source(tmp_path, values: torch.Tensor) -> DeltaRows:
    save_file({"t": values}, tmp_path / "dense.safetensors")
    src = SafetensorsFile(tmp_path / "dense.safetensors")
    return DeltaRows([(1.0, StoredDelta(src, "t", tuple(values.shape)))])


def test_radix_select_equals_kthvalue_with_ties_zeros_and_extremes(tmp_path):
    """top_magnitudes across tiles against torch.kthvalue on the whole |δ|, for every kind of k."""
    g = torch.Generator().manual_seed(3)
    values = torch.randn(96, 50, generator=g) * 1e-3
    flat = values.view(-1)
    flat[:700] = 0.0  # pruned-like zeros
    flat[700:1500] = -flat[700]  # a block of equal magnitudes, both signs
    flat[1500:1600] *= 1e-35  # subnormals
    flat[-3:] = torch.tensor([3e38, -3e38, 1.5])
    flat.copy_(flat[torch.randperm(flat.numel(), generator=g)])
    src = dense_source(tmp_path, values)
    n, magnitudes = values.numel(), values.abs().view(-1)
    for k in sorted({1, 2, 3, 4, 100, 1600, 2400, n - 700, n - 699, n // 2, n - 1, n}):
        found = select.top_magnitudes([src], values.shape, k, ragged_tiles(96, 8), select.Scratch())
        assert found == [torch.kthvalue(magnitudes, n - k + 1).values.item()], k


def test_a_misleading_sample_still_gives_the_exact_threshold(tmp_path, monkeypatch):
    """Every 4th row (the bracket's sample) ten times larger, and no margin: the bracket misses, the exact
    counting pass takes over, and the threshold is still torch.kthvalue's."""
    values = torch.randn(128, 64, generator=torch.Generator().manual_seed(5))
    values[::4] *= 10
    src = dense_source(tmp_path, values)
    monkeypatch.setattr(select, "MARGIN_SIGMAS", 0.0)
    exact, real_exact = [], select.exact_brackets
    monkeypatch.setattr(select, "exact_brackets", lambda *a: exact.append(1) or real_exact(*a))
    n, magnitudes = values.numel(), values.abs().view(-1)
    for k in (n // 10, n // 2, n - 5):
        found = select.top_magnitudes([src], values.shape, k, ragged_tiles(128, 16), select.Scratch())
        assert found == [torch.kthvalue(magnitudes, n - k + 1).values.item()], k
    assert exact, "the sample never misled: the test does not reach the exact pass"


@pytest.mark.parametrize("method", ["ties", "dare_ties", "magnitude_prune"])
def test_fold_in_small_tiles_equals_peft(tmp_path, monkeypatch, method):
    """The whole fold (stream + tiled rules) in tiles of 8 rows against PEFT's rule on PEFT's own deltas."""
    from test_rules_combine import peft_deltas

    monkeypatch.setattr(stream_module, "TILE_ELEMENTS", 8 * 48)
    monkeypatch.setattr(stream_module, "TILE_QUANTUM", 8)
    pre = pico_model("llama", hidden=48)
    gen_dir = save_model(pico_model("llama", hidden=48, seed=1), tmp_path / "general")
    packs = [make_lora_pack(pre, None, tmp_path / "reg" / f"s{i}", f"s{i}", seed=i + 1,
                            target_modules=["q_proj", "up_proj", "down_proj"]) for i in range(3)]
    omegas = [0.4, 0.7, 1.1]
    out = tmp_path / "merged"
    fold(FoldRequest(general=gen_dir, packs=[str(p) for p in packs], out=out, weights=omegas, method=method,
                     density=0.4, seed=5, progress=False))
    deltas = [peft_deltas(pre, p) for p in packs]
    g, ours = state_of(gen_dir), state_of(out)
    for name in deltas[0]:
        assert g[name].shape[0] >= 48  # several tiles of 8 rows
        scaled = [w * d[name] for w, d in zip(omegas, deltas, strict=True)]
        torch.manual_seed(tensor_seed(5, name))
        ref = PEFT_RULES[method](scaled, torch.ones(3), 0.4)
        torch.testing.assert_close(ours[name], g[name] + ref, atol=1e-5, rtol=0)
