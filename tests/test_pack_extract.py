"""Dense and SVD-compressed task vectors from full-parameter models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel

from lora_merge.core.errors import LoraMergeError
from lora_merge.fold.write import FoldRequest, fold
from lora_merge.pack.extract import ExtractRequest, extract_pack
from lora_merge.pico import perturbed, pico_model, save_model, state_of


@pytest.fixture
def finetuned(tmp_path):
    """θpre and θD = θpre + a low-rank-ish update on every weight (a stand-in for full finetuning)."""
    pre = pico_model("llama")
    ft = perturbed(pre, seed=5, scale=0.05)
    return pre, ft, save_model(pre, tmp_path / "pre"), save_model(ft, tmp_path / "ft")


def test_dense_pack_folded_into_base_at_one_reproduces_the_model(tmp_path, finetuned):
    _pre, _ft, pre_dir, ft_dir = finetuned
    res = extract_pack(ExtractRequest(model=ft_dir, base=pre_dir, name="skill", out=tmp_path / "p", instances=123,
                                      progress=False))
    manifest = json.loads((tmp_path / "p" / "skill.json").read_text())
    assert res.kind == "dense" and manifest["kind"] == "dense" and manifest["data"]["instances"] == 123
    assert (tmp_path / "p" / "task_vector.safetensors").is_file() and not (tmp_path / "p" / "model.safetensors").exists()
    fold(FoldRequest(general=pre_dir, packs=[str(tmp_path / "p")], out=tmp_path / "m", weights=[1.0], progress=False))
    theta_d, merged = state_of(ft_dir), state_of(tmp_path / "m")
    assert merged.keys() == theta_d.keys()
    for k in theta_d:
        assert torch.allclose(merged[k], theta_d[k], atol=1e-6, rtol=0), k
    # and at ω = 0.5 it lands halfway, by hand
    fold(FoldRequest(general=pre_dir, packs=[str(tmp_path / "p")], out=tmp_path / "h", weights=[0.5], progress=False))
    half, theta_pre = state_of(tmp_path / "h"), state_of(pre_dir)
    for k in theta_d:
        assert torch.allclose(half[k], theta_pre[k] + 0.5 * (theta_d[k] - theta_pre[k]), atol=1e-6), k


def reconstruct_with_peft(pre, pack) -> dict[str, torch.Tensor]:
    return PeftModel.from_pretrained(copy.deepcopy(pre), pack).merge_and_unload().state_dict()


def test_svd_error_falls_with_rank_and_vanishes_at_full_rank(tmp_path, finetuned):
    pre, _ft, pre_dir, ft_dir = finetuned
    theta_pre, theta_d = state_of(pre_dir), state_of(ft_dir)
    two_d = [k for k in theta_d if theta_d[k].ndim == 2]
    overall = []
    for rank in (2, 8, 64):
        res = extract_pack(ExtractRequest(model=ft_dir, base=pre_dir, name=f"r{rank}", out=tmp_path / f"r{rank}",
                                          rank=rank, progress=False))
        merged = reconstruct_with_peft(pre, tmp_path / f"r{rank}")  # PEFT itself reads the pack
        reported = {e.name: e for e in res.errors}
        for k in two_d:
            tau = theta_d[k] - theta_pre[k]
            err = torch.linalg.matrix_norm(tau - (merged[k] - theta_pre[k])) / torch.linalg.matrix_norm(tau)
            assert reported[k].relative == pytest.approx(err.item(), abs=1e-4), k
            # Eckart–Young: the best rank-r error is the tail of the singular values
            s = torch.linalg.svdvals(tau.double())
            r = min(rank, *tau.shape)
            assert err.item() == pytest.approx((s[r:].square().sum() / s.square().sum()).sqrt().item(), abs=1e-4), k
        overall.append(res.overall_error)
        dropped = [e for e in res.errors if e.rank == 0]
        assert {e.name for e in dropped} == {k for k in theta_d if theta_d[k].ndim != 2}
        assert all(e.relative == 1.0 for e in dropped)
    assert overall == sorted(overall, reverse=True) and overall[0] > overall[-1]
    at_full = {e.name: e for e in res.errors}
    assert max(at_full[k].relative for k in two_d) < 1e-5
    cfg = json.loads((tmp_path / "r64" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 64 and cfg["rank_pattern"]


def test_bad_extract_requests_write_nothing(tmp_path, finetuned):
    _pre, _ft, pre_dir, ft_dir = finetuned
    other_dir = save_model(pico_model("llama", hidden=64), tmp_path / "other")
    out = tmp_path / "adapters" / "x"
    for kw, match in [
        (dict(model=other_dir, base=pre_dir), "different sizes"),
        (dict(model=ft_dir, base=pre_dir, rank=0), "positive rank"),
        (dict(model=ft_dir, base=pre_dir, dtype="int8"), "dtype"),
    ]:
        with pytest.raises(LoraMergeError, match=match):
            extract_pack(ExtractRequest(name="x", out=out, progress=False, **kw))
        assert not out.exists() and not list(tmp_path.rglob(".*x.*"))
    extract_pack(ExtractRequest(model=ft_dir, base=pre_dir, name="x", out=out, progress=False))
    with pytest.raises(LoraMergeError, match="already exists"):
        extract_pack(ExtractRequest(model=ft_dir, base=pre_dir, name="x", out=out, progress=False))


def test_cli_extract_rank_reports_errors(tmp_path, finetuned):
    from lora_merge.cli import main

    _pre, _ft, pre_dir, ft_dir = finetuned
    res = CliRunner().invoke(main, ["extract", "--model", str(ft_dir), "--base", str(pre_dir), "--name", "s",
                                    "--adapters-dir", str(tmp_path / "reg"), "--rank", "4", "--instances", "50"])
    assert res.exit_code == 0, res.output
    assert "overall relative error" in res.output and "dropped" in res.output
    manifest = json.loads((tmp_path / "reg" / "s" / "skill.json").read_text())
    assert manifest["kind"] == "lora" and manifest["training"]["rank"] == 4
    bad = CliRunner().invoke(main, ["extract", "--model", str(ft_dir), "--base", str(tmp_path / "nope"), "--name", "t",
                                    "--adapters-dir", str(tmp_path / "reg")])
    assert bad.exit_code == 2 and not (tmp_path / "reg" / "t").exists()
