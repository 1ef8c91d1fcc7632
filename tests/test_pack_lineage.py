"""`pack merge` keeps what its sources can show (issue 35, item 2): one base, the |D| actually used, and ω bounded
through chained merges. Oracles: the sources' own sketch files read by safetensors, and folds of the sources."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pack.skillpack import ADAPTER_CONFIG, BASE_SKETCH
from lora_merge.pico import make_lora_pack, perturbed, pico_model, save_model, state_of

G = 400


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """θpre, θG, a foreign θpre (another initialisation) and packs: skill, other (θpre, few modules), fskill
    (foreign), bare (a manifest but no sketch), lm (θpre, lm_head only: no weight in common with `other`)."""
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("lineage")
    pre = pico_model("llama")
    pre_dir = save_model(pre, root / "pre")
    gen_dir = save_model(perturbed(pre, seed=1), root / "general")
    fpre = pico_model("llama", seed=7)
    fpre_dir = save_model(fpre, root / "fpre")
    reg = root / "reg"
    make_lora_pack(pre, pre_dir, reg / "skill", "skill", seed=3, instances=100)
    make_lora_pack(pre, pre_dir, reg / "other", "other", seed=4, instances=50, target_modules=["q_proj", "v_proj"])
    make_lora_pack(fpre, fpre_dir, reg / "fskill", "fskill", seed=5, instances=50)
    make_lora_pack(pre, None, reg / "bare", "bare", seed=6, instances=50)
    make_lora_pack(pre, pre_dir, reg / "lm", "lm", seed=8, instances=20, target_modules=["lm_head"])
    return SimpleNamespace(root=root, pre=pre, pre_dir=pre_dir, gen_dir=gen_dir, fpre_dir=fpre_dir, reg=reg)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def merge(w, packs, out, *extra):
    return cli("pack", "merge", "--adapters", packs, "--adapters-dir", w.reg, "--out", out, *extra)


def sketch_rows(path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = [n for n, _ in json.loads(f.metadata()["weights"])]
        return dict(zip(names, f.get_tensor("values"), strict=True))


def nothing_written(out):
    return not out.exists() and not [p for p in out.parent.glob(".lora_merge*")]


@pytest.mark.parametrize("extra", [(), ("--base", "PRE")], ids=["sources", "against-base"])
def test_a_source_of_another_base_is_refused_with_or_without_base(w, tmp_path, extra):
    extra = tuple(str(w.pre_dir) if e == "PRE" else e for e in extra)
    res = merge(w, "skill,fskill", tmp_path / "m", *extra)
    assert res.exit_code == 2, res.output
    assert ("'fskill' was trained from" in res.output or "trained from different bases" in res.output)
    assert "--allow-foreign-base" in res.output and nothing_written(tmp_path / "m")


def test_allow_foreign_base_merges_records_it_and_leaves_no_sketch_the_fold_reports(w, tmp_path):
    res = merge(w, "skill,fskill", tmp_path / "reg" / "m", "--allow-foreign-base")
    assert res.exit_code == 0, res.output
    assert "warning: --allow-foreign-base" in res.output
    assert not (tmp_path / "reg" / "m" / BASE_SKETCH).exists()  # no base claimed
    record = json.loads((tmp_path / "reg" / "m" / "skill.json").read_text())["training"]["merge"]
    assert "different bases" in record["allow_foreign_base"][0]
    folded = cli("fold", "--general", w.gen_dir, "--adapters", "m", "--adapters-dir", tmp_path / "reg",
                 "--weights", "1", "--out", tmp_path / "o")
    assert folded.exit_code == 0 and "records no sketch of its base" in folded.output  # never "descends"


def test_a_source_without_a_sketch_is_refused(w, tmp_path):
    res = merge(w, "skill,bare", tmp_path / "m", "--base", w.pre_dir)
    assert res.exit_code == 2 and "'bare' records no sketch of its base" in res.output, res.output
    assert nothing_written(tmp_path / "m")


def test_sources_that_sketch_nothing_in_common_need_base_and_keep_their_own_sketches(w, tmp_path):
    res = merge(w, "other,lm", tmp_path / "m", "--weights", "1,1")
    assert res.exit_code == 2 and "sketch no weight in common" in res.output and "--base" in res.output
    # --base kept in bfloat16: close enough to be the packs' θpre, but a fresh sketch of it would hold its rounded
    # values; the merged pack keeps the sources' own float32 sketches instead.
    bf16 = save_model(w.pre.to(torch.bfloat16), tmp_path / "pre-bf16")
    res = merge(w, "other,lm", tmp_path / "m", "--weights", "1,1", "--base", bf16)
    assert res.exit_code == 0, res.output
    merged = sketch_rows(tmp_path / "m" / BASE_SKETCH)
    sources = {**sketch_rows(w.reg / "lm" / BASE_SKETCH), **sketch_rows(w.reg / "other" / BASE_SKETCH)}
    k = min(r.numel() for r in sources.values())
    assert set(merged) == set(sources) and all(torch.equal(merged[n], sources[n][:k]) for n in merged)
    assert any(not torch.equal(merged[n], merged[n].to(torch.bfloat16).float()) for n in merged)  # not rounded


def test_weights_1_0_record_the_data_used_so_the_size_rule_folds_the_kept_source_alone(w, tmp_path):
    res = merge(w, "skill,other", tmp_path / "reg" / "m", "--weights", "1,0")
    assert res.exit_code == 0 and "|D| = 100" in res.output, res.output
    assert json.loads((tmp_path / "reg" / "m" / "skill.json").read_text())["data"]["instances"] == 100
    fold(FoldRequest(general=w.gen_dir, packs=["m"], adapters_dir=tmp_path / "reg", out=tmp_path / "fm",
                     general_size=G, progress=False))
    fold(FoldRequest(general=w.gen_dir, packs=["skill"], adapters_dir=w.reg, out=tmp_path / "fs",
                     general_size=G, progress=False))  # the oracle: skill alone at |D|/|G| = 100/400
    merged, alone = state_of(tmp_path / "fm"), state_of(tmp_path / "fs")
    for k in alone:
        assert torch.allclose(merged[k], alone[k], atol=1e-6, rtol=0), k


def test_chained_merges_and_folds_are_held_to_the_omega_bound_on_the_product(w, tmp_path):
    reg = tmp_path / "reg"
    shutil.copytree(w.reg / "other", reg / "other")
    assert merge(w, "skill,other", reg / "m10", "--weights", "10,10").exit_code == 0
    record = json.loads((reg / "m10" / "skill.json").read_text())["training"]["merge"]
    assert record["effective_scale"] == 10 and [s["effective_scale"] for s in record["sources"]] == [10, 10]
    res = cli("pack", "merge", "--adapters", "m10,other", "--adapters-dir", reg, "--weights", "10,1",
              "--out", reg / "m100")
    assert res.exit_code == 2 and "scaled by 100" in res.output and nothing_written(reg / "m100"), res.output
    res = cli("fold", "--general", w.gen_dir, "--adapters", "m10", "--adapters-dir", reg, "--weights", "2",
              "--out", tmp_path / "o")
    assert res.exit_code == 2 and "scaled by 20" in res.output and nothing_written(tmp_path / "o"), res.output
    # within the bound: a merge of merges at ω ≤ 1, and the merged pack folded at ω = 1
    assert cli("pack", "merge", "--adapters", "m10,other", "--adapters-dir", reg, "--weights", "1,0.5",
               "--out", reg / "ok").exit_code == 0
    assert json.loads((reg / "ok" / "skill.json").read_text())["training"]["merge"]["effective_scale"] == 10
    assert cli("fold", "--general", w.gen_dir, "--adapters", "ok", "--adapters-dir", reg, "--weights", "1",
               "--out", tmp_path / "o").exit_code == 0


def test_a_format_1_source_whose_config_is_not_covered_is_not_blessed_by_a_merge(w, tmp_path):
    reg = tmp_path / "reg"
    for name in ("skill", "other"):
        shutil.copytree(w.reg / name, reg / name)
    manifest = json.loads((reg / "skill" / "skill.json").read_text())
    manifest["format_version"] = 1
    del manifest["files"][ADAPTER_CONFIG], manifest["files"][BASE_SKETCH]
    (reg / "skill" / "skill.json").write_text(json.dumps(manifest))
    (reg / "skill" / BASE_SKETCH).unlink()  # a format-1 pack has none
    res = cli("pack", "merge", "--adapters", "skill,other", "--adapters-dir", reg, "--out", reg / "m",
              "--allow-foreign-base")
    assert res.exit_code == 2 and "does not cover adapter_config.json" in res.output and "pack upgrade" in res.output
    assert nothing_written(reg / "m")


def test_the_library_call_refuses_too(w, tmp_path):
    from lora_merge.fold.plan import load_packs
    from lora_merge.pack.merge import PackMergeRequest, merge_packs

    packs = load_packs(["skill", "fskill"], w.reg)
    with pytest.raises(LoraMergeError, match="different bases"):
        merge_packs(PackMergeRequest(packs=packs, out=tmp_path / "m", name="m", weights=[1.0, 1.0]))
    assert nothing_written(tmp_path / "m")
