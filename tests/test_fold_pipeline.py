"""The pipelined fold (lora_merge/fold/stream.py) against a plain reference loop, and its failure paths."""

from __future__ import annotations

import itertools
import json
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

import lora_merge.fold.stream as stream
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.io.placed import PlacedWriter
from lora_merge.io.shards import PlannedTensor
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.task_vector import LowRankDelta
from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of
from lora_merge.rules.combine import RuleOptions, get_rule

WEIGHTS = [0.3, 0.7]


def reference_fold(general: dict[str, torch.Tensor], packs, weights) -> dict[str, torch.Tensor]:
    """θG.float() + [ω₁s₁B₁ | ω₂s₂B₂] @ [A₁; A₂], cast back: one plain loop over tensors, no pipeline.

    This is Σ ωᵢsᵢBᵢAᵢ written as one matmul, the float32 sum the fold promises (its rounding
    differs from adding the packs' products one by one in the last float32 bit, which can move
    a bf16 rounding; test_several_packs_within_one_rounding_of_the_exact_sum bounds that).
    """
    out = {}
    for name, theta in general.items():
        bs, as_ = [], []
        for pack, w in zip(packs, weights, strict=True):
            cfg = json.loads((pack / "adapter_config.json").read_text())
            lora = load_file(str(pack / "adapter_model.safetensors"))
            module = "base_model.model." + name.removesuffix(".weight")
            if module + ".lora_A.weight" in lora:
                bs.append(lora[module + ".lora_B.weight"].float() * (cfg["lora_alpha"] / cfg["r"]) * w)
                as_.append(lora[module + ".lora_A.weight"].float())
        acc = theta.float() + torch.cat(bs, 1) @ torch.cat(as_, 0) if bs else theta.float()
        out[name] = acc.to(theta.dtype)
    return out


def one_by_one(general: dict[str, torch.Tensor], packs, weights) -> dict[str, torch.Tensor]:
    """θG + Σ ωᵢsᵢBᵢAᵢ in float64, pack by pack: the exact sum, to bound the float32 one against."""
    out = {}
    for name, theta in general.items():
        acc = theta.double()
        for pack, w in zip(packs, weights, strict=True):
            cfg = json.loads((pack / "adapter_config.json").read_text())
            lora = load_file(str(pack / "adapter_model.safetensors"))
            module = "base_model.model." + name.removesuffix(".weight")
            if module + ".lora_A.weight" in lora:
                a, b = lora[module + ".lora_A.weight"].double(), lora[module + ".lora_B.weight"].double()
                acc = acc + (b * (cfg["lora_alpha"] / cfg["r"]) * w) @ a
        out[name] = acc
    return out


@pytest.fixture(scope="module")
def small_tiles():
    """Tiles of 8 rows, so that every pico weight is merged in several tiles plus a ragged last one."""
    saved = stream.TILE_ELEMENTS, stream.TILE_QUANTUM
    stream.TILE_ELEMENTS, stream.TILE_QUANTUM = 8 * 48, 8
    yield
    stream.TILE_ELEMENTS, stream.TILE_QUANTUM = saved


@pytest.fixture(scope="module", params=[torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def setup(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"pipe-{request.param}".replace("torch.", ""))
    model = pico_model("llama", hidden=48, vocab=200)  # 96 intermediate rows: tiles of 8 plus remainders
    general = save_model(model.to(request.param), tmp / "general", max_shard_size="60KB")
    packs = [make_lora_pack(pico_model("llama", hidden=48, vocab=200), None, tmp / "packs" / f"s{i}", f"s{i}",
                            seed=i + 1, target_modules="all-linear") for i in range(2)]
    return general, packs, tmp


def test_tiles_cover_every_row_once():
    for rows, cols in [(1, 5), (7, 3), (64, 2048), (5632, 2048), (2048, 5632), (32000, 2048), (129, 4096)]:
        tiles = stream.tile_rows(rows, cols)
        assert tiles[0][0] == 0 and tiles[-1][1] == rows
        assert all(a[1] == b[0] for a, b in itertools.pairwise(tiles))
        # tiles under 8 rows take another matmul kernel: only a whole small tensor may have one
        assert all(r1 - r0 >= 8 for r0, r1 in tiles) or len(tiles) == 1


def test_pipelined_fold_equals_reference_bit_for_bit(setup, small_tiles):
    general, packs, tmp = setup
    out = tmp / "merged"
    fold(FoldRequest(general=general, packs=[str(p) for p in packs], out=out, weights=WEIGHTS, progress=False,
                     max_shard_size="60KB", force=True))
    assert len(list(out.glob("*.safetensors"))) > 1  # the sharded path was exercised
    ours, theta = state_of(out), state_of(general)
    expected = reference_fold(theta, packs, WEIGHTS)
    assert ours.keys() == expected.keys()
    changed = 0
    for name, t in expected.items():
        assert ours[name].dtype == t.dtype, name
        assert torch.equal(ours[name], t), name
        changed += not torch.equal(t, theta[name])
    assert changed == 2 * 7  # every linear weight of both layers moved, nothing else did


def test_several_packs_within_one_rounding_of_the_exact_sum(setup):
    """The float32 fold output (no final rounding to bf16) is the exact float64 sum to float32 accuracy."""
    general, packs, tmp = setup
    out = tmp / "as-fp32-two"
    fold(FoldRequest(general=general, packs=[str(p) for p in packs], out=out, weights=WEIGHTS, dtype="float32",
                     progress=False, force=True))
    ours, exact = state_of(out), one_by_one(state_of(general), packs, WEIGHTS)
    for name, t in exact.items():
        scale = t.abs().max().item() or 1.0
        assert (ours[name].double() - t).abs().max().item() <= 1e-6 * scale, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dtype_conversion_of_untouched_tensors(setup, small_tiles, dtype):
    """Untouched matrices change dtype tile by tile (embeddings, lm_head): each value is cast exactly as .to() does."""
    general, packs, tmp = setup
    out = tmp / f"as-{dtype}"
    name = str(dtype).removeprefix("torch.")
    fold(FoldRequest(general=general, packs=[str(packs[0])], out=out, weights=[0.5], dtype=name, progress=False,
                     force=True))
    ours, theta = state_of(out), state_of(general)
    expected = reference_fold(theta, packs[:1], [0.5])
    untouched = [n for n, t in theta.items() if torch.equal(expected[n], t)]
    assert any(theta[n].dim() == 2 and theta[n].shape[0] > 8 for n in untouched)  # several tiles of 8 rows
    for n, t in theta.items():
        assert ours[n].dtype == dtype
        if n in untouched:
            assert torch.equal(ours[n], t.to(dtype)), n


def _no_leftovers(tmp, name):
    return not (tmp / name).exists() and not list(tmp.glob(f".lora_merge.{name}.*"))


def test_failure_in_the_merge_thread_leaves_nothing(setup, monkeypatch):
    general, packs, tmp = setup
    calls = {"n": 0}
    plain = LowRankDelta.factors

    def failing(self, device="cpu"):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom in the middle")
        return plain(self, device)

    monkeypatch.setattr(LowRankDelta, "factors", failing)
    with pytest.raises(RuntimeError, match="boom in the middle"):
        fold(FoldRequest(general=general, packs=[str(packs[0])], out=tmp / "broken", weights=[0.3], progress=False))
    assert calls["n"] >= 5  # the failure came mid-way (other workers may have gone on a little)
    assert _no_leftovers(tmp, "broken")
    assert not [t for t in threading.enumerate() if t.name == "fold-merge"]


def test_failure_in_the_writer_leaves_nothing(setup, monkeypatch):
    general, packs, tmp = setup
    written = {"n": 0}
    plain = PlacedWriter.write_at

    def failing(self, name, at, data):
        written["n"] += 1
        if written["n"] == 3:
            raise OSError(5, "simulated I/O error")
        return plain(self, name, at, data)

    monkeypatch.setattr(PlacedWriter, "write_at", failing)
    with pytest.raises(Exception, match="simulated I/O error"):
        fold(FoldRequest(general=general, packs=[str(packs[0])], out=tmp / "broken2", weights=[0.3], progress=False))
    assert _no_leftovers(tmp, "broken2")
    assert not [t for t in threading.enumerate() if t.name == "fold-merge"]


def test_one_worker_reuses_its_tile_buffer_across_dtypes(tmp_path):
    """A worker's tile buffer, sized for one tensor's dtype, serves the next tensor in another dtype."""
    src = {"a": torch.randn(7, 3), "b": torch.randn(2, 2).bfloat16(), "c": torch.randn(5, 3).half()}
    (tmp_path / "in").mkdir()
    save_file(src, str(tmp_path / "in" / "model.safetensors"))
    out_dtypes = {"a": torch.bfloat16, "b": torch.float32, "c": torch.float32}  # 42 bytes, then 16, then 60
    plan = [PlannedTensor(n, out_dtypes[n], tuple(t.shape)) for n, t in src.items()]
    general = WeightSet.open(tmp_path / "in")
    (tmp_path / "out").mkdir()
    writer = PlacedWriter(tmp_path / "out", plan, 1 << 30, fsync=False)
    writer.open()
    stream.stream_fold(plan, {n: n for n in src}, general, [], get_rule("linear"), RuleOptions(), torch.device("cpu"),
                       writer, "linear", workers=1)
    (name,) = writer.finish()
    back = load_file(str(tmp_path / "out" / name))
    assert all(torch.equal(back[n], t.to(out_dtypes[n])) for n, t in src.items())
