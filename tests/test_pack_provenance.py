"""Provenance: packs record a sketch of θpre; the fold refuses a θG that does not descend from it.

Oracles: the sample positions are recomputed here from their documented definition (sha256 of
``seed/name/i``, mod the tensor's size) and the distance from the whole tensors, never from the code's own
sketch reader.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.skillpack import BASE_SKETCH, load_pack
from lora_merge.pico import make_lora_pack, pico_model, save_model, state_of


def positions(name: str, numel: int, count: int = 16, seed: int = 0) -> list[int]:
    return [int.from_bytes(hashlib.sha256(f"{seed}/{name}/{i}".encode()).digest()[:8], "little") % numel
            for i in range(min(count, numel))]


def sketch_rows(path) -> dict[str, torch.Tensor]:
    """The sketch file read by safetensors itself: row i of `values` belongs to the i-th weight of the metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = [n for n, _numel in json.loads(f.metadata()["weights"])]
        values = f.get_tensor("values")
    return dict(zip(names, values, strict=True))


def oracle(pre: dict, other: dict, rows: dict) -> tuple[float, float]:
    """(median over weights of ‖θ[S] − θpre[S]‖ / ‖θpre[S]‖, median of cos(θ[S], θpre[S])) at the sampled
    positions (as many per weight as the sketch's rows hold), from whole tensors."""
    dist, cos = [], []
    for n, row in rows.items():
        idx = torch.tensor(positions(n, pre[n].numel(), count=row.numel()))
        p, o = pre[n].reshape(-1)[idx].double(), other[n].reshape(-1)[idx].double()
        dist.append(float((o - p).norm() / p.norm()))
        cos.append(float(o @ p / (o.norm() * p.norm())))
    return statistics.median(dist), statistics.median(cos)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fold_args(general, reg, out, *extra):
    return ("fold", "--general", general, "--adapters", "skill", "--adapters-dir", reg, "--weights", "1",
            "--out", out, *extra)


@pytest.fixture(scope="module")
def foreign(built, tmp_path_factory):
    """A model of θpre's very config and shapes that does not descend from it: another initialisation."""
    return save_model(pico_model("llama", seed=7), tmp_path_factory.mktemp("foreign") / "model")


def test_the_sketch_samples_the_base_where_the_pack_touches_it(built):
    sketch = sketch_rows(built.pack / BASE_SKETCH)
    pre = state_of(built.pre_dir)
    adapted = sorted(k for k in pre if k.endswith("_proj.weight"))  # the pack adapts all-linear
    assert sorted(sketch) == adapted
    samples = {row.numel() for row in sketch.values()}
    assert samples == {19}  # 14 weights: 256 samples in all at least, so 19 each
    for n in adapted:
        assert torch.equal(sketch[n], pre[n].reshape(-1)[torch.tensor(positions(n, pre[n].numel(), count=19))])
    assert (built.pack / BASE_SKETCH).stat().st_size < 4096  # a few kB
    assert BASE_SKETCH in load_pack(built.pack).manifest.files  # hashed with the pack


def test_elements_reads_what_indexing_the_whole_tensor_gives(built):
    ws = WeightSet.open(built.gen_dir)
    full = state_of(built.gen_dir)
    for n in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        idx = positions(n, full[n].numel(), count=40)
        assert torch.equal(ws.elements(n, idx), full[n].reshape(-1)[torch.tensor(idx)].float())


def test_a_foreign_same_shaped_general_model_is_refused_naming_its_distance(built, reg, foreign, tmp_path):
    distance, cosine = oracle(state_of(built.pre_dir), state_of(foreign), sketch_rows(built.pack / BASE_SKETCH))
    assert distance > 1 and abs(cosine) < 0.3  # independent weights: ‖a − b‖² = ‖a‖² + ‖b‖², cosine ≈ 0
    res = cli(*fold_args(foreign, reg, tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert "does not descend from the base pack 'skill' was trained from" in res.output
    assert f"relative distance {distance:.3g}" in res.output and f"cosine {cosine:.2f}" in res.output
    assert "--allow-foreign-base" in res.output
    assert not (tmp_path / "out").exists() and not any(tmp_path.glob(".lora_merge*"))


def test_allow_foreign_base_folds_records_the_distance_and_the_recipe_reruns(built, reg, foreign, tmp_path):
    expected, cosine = oracle(state_of(built.pre_dir), state_of(foreign), sketch_rows(built.pack / BASE_SKETCH))
    res = cli(*fold_args(foreign, reg, tmp_path / "out", "--allow-foreign-base"))
    assert res.exit_code == 0, res.output
    assert "--allow-foreign-base" in res.output and f"{expected:.3g}" in res.output  # the warning
    record = json.loads((tmp_path / "out" / "lora_merge.json").read_text())
    pack = record["packs"][0]
    assert pack["base_check"] == "foreign-allowed" and pack["base_distance"] == pytest.approx(expected, rel=1e-5)
    assert pack["base_cosine"] == pytest.approx(cosine, abs=1e-6)
    assert any("--allow-foreign-base" in w for w in record["warnings"])
    assert "allow_foreign_base: true" in (tmp_path / "out" / "lora_merge_recipe.yml").read_text()
    assert f"does NOT descend (allowed), distance {expected:.3g}" in (tmp_path / "out" / "README.md").read_text()
    rerun = cli("fold", "--config", tmp_path / "out" / "lora_merge_recipe.yml", "--out", tmp_path / "again")
    assert rerun.exit_code == 0, rerun.output


def test_a_descendant_general_model_is_accepted_and_its_distance_recorded(built, reg, tmp_path):
    expected, cosine = oracle(state_of(built.pre_dir), state_of(built.gen_dir), sketch_rows(built.pack / BASE_SKETCH))
    assert 0 < expected < 0.3 and cosine > 0.9
    res = cli(*fold_args(built.gen_dir, reg, tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert (f"descends from its base (relative distance {expected:.3g}, cosine {cosine:.4f}; medians of 14 sampled "
            "weights)") in res.output
    pack = json.loads((tmp_path / "out" / "lora_merge.json").read_text())["packs"][0]
    assert pack["base_check"] == "descends" and pack["base_distance"] == pytest.approx(expected, rel=1e-5)
    # θpre itself is its own descendant, at distance 0
    res = cli(*fold_args(built.pre_dir, reg, tmp_path / "onto-pre"))
    assert res.exit_code == 0 and "relative distance 0, cosine 1.0000" in res.output


def test_a_descendant_moved_as_far_as_its_own_size_is_still_one(built, reg, tmp_path):
    """A small model's random-init θpre tuned hard moves by about its own norm: its relative distance is that
    of an unrelated model (≈ 1), but θpre is still its main component, and the cosine says so."""
    from lora_merge.pico import perturbed

    far = save_model(perturbed(built.pre, seed=5, scale=0.02), tmp_path / "far")  # the update ≈ the weights' size
    distance, cosine = oracle(state_of(built.pre_dir), state_of(far), sketch_rows(built.pack / BASE_SKETCH))
    assert distance > 0.8 and cosine > 0.5
    res = cli(*fold_args(far, reg, tmp_path / "out"))
    assert res.exit_code == 0 and "descends from its base" in res.output, res.output


def test_a_pack_without_a_sketch_folds_with_a_one_line_notice(built, reg, tmp_path):
    """A format-2 pack written before sketches existed: no base_sketch.safetensors, no hash for it."""
    (reg / "skill" / BASE_SKETCH).unlink()
    manifest = json.loads((reg / "skill" / "skill.json").read_text())
    del manifest["files"][BASE_SKETCH]
    (reg / "skill" / "skill.json").write_text(json.dumps(manifest))
    res = cli(*fold_args(built.gen_dir, reg, tmp_path / "out"))
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if "records no sketch of its base" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ")
    record = json.loads((tmp_path / "out" / "lora_merge.json").read_text())
    assert record["packs"][0]["base_check"] == "no-sketch" and record["packs"][0]["base_distance"] is None
    assert not record["warnings"]  # a notice, not a warning
    assert "none: a fold cannot check" in cli("pack", "inspect", "skill", "--adapters-dir", reg).output


def test_a_changed_sketch_fails_verification(built, reg, tmp_path):
    sketch = reg / "skill" / BASE_SKETCH
    data = bytearray(sketch.read_bytes())
    data[-1] ^= 1
    sketch.write_bytes(bytes(data))
    res = cli(*fold_args(built.gen_dir, reg, tmp_path / "out"))
    assert res.exit_code == 2 and f"{BASE_SKETCH}: sha256 mismatch" in res.output


def test_a_malformed_sketch_is_a_clear_error(built, reg, tmp_path):
    from safetensors.torch import save_file

    save_file({"values": torch.zeros(3)}, reg / "skill" / BASE_SKETCH)  # no metadata
    manifest = json.loads((reg / "skill" / "skill.json").read_text())
    manifest["files"][BASE_SKETCH] = hashlib.sha256((reg / "skill" / BASE_SKETCH).read_bytes()).hexdigest()
    (reg / "skill" / "skill.json").write_text(json.dumps(manifest))
    res = cli(*fold_args(built.gen_dir, reg, tmp_path / "out"))
    assert res.exit_code == 2 and "not a valid base sketch" in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_the_library_call_refuses_too(built, reg, foreign, tmp_path):
    from lora_merge.fold.write import FoldRequest, fold

    with pytest.raises(LoraMergeError, match="does not descend"):
        fold(FoldRequest(general=foreign, packs=["skill"], adapters_dir=reg, out=tmp_path / "o", weights=[1.0]))
    from lora_merge.evaluate.sweep import SweepRequest, run_sweep

    evals = tmp_path / "e.jsonl"
    evals.write_text(json.dumps({"prompt": "a", "answer": "b", "metric": "exact"}) + "\n")
    with pytest.raises(LoraMergeError, match="does not descend"):
        run_sweep(SweepRequest(general=foreign, packs=["skill"], adapters_dir=reg, out=tmp_path / "s",
                               evals={"general": [evals], "skill": [evals]}, general_size=100))
    assert not (tmp_path / "s").exists()


def test_pack_create_sketches_its_base_only_when_given(built, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(built.pack, src, ignore=shutil.ignore_patterns("skill.json", "README.md", BASE_SKETCH))
    assert cli("pack", "create", src, "--name", "a", "--instances", 5, "--base", built.pre_dir,
               "--adapters-dir", tmp_path / "reg").exit_code == 0
    assert (tmp_path / "reg" / "a" / BASE_SKETCH).read_bytes() == (built.pack / BASE_SKETCH).read_bytes()
    (src / BASE_SKETCH).write_bytes(b"stale")  # a file of that name in an adapter folder is never copied
    assert cli("pack", "create", src, "--name", "b", "--instances", 5, "--adapters-dir", tmp_path / "reg").exit_code == 0
    assert not (tmp_path / "reg" / "b" / BASE_SKETCH).exists()


def test_pack_merge_joins_the_sources_sketches(built, tmp_path):
    from lora_merge.pack.merge import PackMergeRequest, merge_packs

    other = make_lora_pack(built.pre, built.pre_dir, tmp_path / "other", "other", seed=4,
                           target_modules=["q_proj", "v_proj", "lm_head"])
    merge_packs(PackMergeRequest(packs=[load_pack(built.pack), load_pack(other)], out=tmp_path / "merged", name="m",
                                 weights=[0.5, 0.5]))
    merged = sketch_rows(tmp_path / "merged" / BASE_SKETCH)
    first, second = sketch_rows(built.pack / BASE_SKETCH), sketch_rows(other / BASE_SKETCH)
    assert set(merged) == set(first) | set(second) and "lm_head.weight" in merged
    assert {row.numel() for row in merged.values()} == {19}  # the smaller sample count (positions are prefixes)
    for n in merged:
        assert torch.equal(merged[n], {**second, **first}[n][:19])


def test_extract_sketches_the_base(built, tmp_path):
    from lora_merge.pack.extract import ExtractRequest, extract_pack

    extract_pack(ExtractRequest(model=built.gen_dir, base=built.pre_dir, name="x", out=tmp_path / "x", instances=3,
                                progress=False))
    pre = state_of(built.pre_dir)
    assert set(sketch_rows(tmp_path / "x" / BASE_SKETCH)) == {k for k, v in pre.items() if v.is_floating_point()}


def test_a_dense_pack_is_not_fooled_by_norm_weights_every_initialisation_shares(built, foreign, tmp_path):
    """A dense pack sketches the norm weights too: 1.0 in θpre and in any fresh model. Pooled over all samples
    they would outweigh the matrices (≈ 0.02) and call the foreign model a descendant; medians over weights do
    not."""
    from lora_merge.fold.write import FoldRequest, fold
    from lora_merge.pack.extract import ExtractRequest, extract_pack

    extract_pack(ExtractRequest(model=built.gen_dir, base=built.pre_dir, name="d", out=tmp_path / "reg" / "d",
                                instances=3, progress=False))
    pre, other = state_of(built.pre_dir), state_of(foreign)
    rows = sketch_rows(tmp_path / "reg" / "d" / BASE_SKETCH)
    norms = [n for n in rows if "norm" in n]
    assert norms and all(torch.equal(pre[n], other[n]) for n in norms)
    at = {n: torch.tensor(positions(n, pre[n].numel(), count=rows[n].numel())) for n in rows}
    pooled = [torch.cat([m[n].reshape(-1)[at[n]] for n in rows]) for m in (pre, other)]
    assert float((pooled[1] - pooled[0]).norm() / pooled[0].norm()) < 0.1  # pooled: "a descendant"
    assert float(pooled[1] @ pooled[0] / (pooled[1].norm() * pooled[0].norm())) > 0.9  # pooled cosine too
    expected, cosine = oracle(pre, other, rows)
    assert expected > 1 and cosine < 0.5
    with pytest.raises(LoraMergeError, match=f"relative distance {expected:.3g}"):
        fold(FoldRequest(general=foreign, packs=["d"], adapters_dir=tmp_path / "reg", out=tmp_path / "o",
                         weights=[1.0]))
