"""What a pack's hashes vouch for (issue 35, items 4 and 6): no downgrade to format 1, a sketch that covers what
the pack changes, and the bytes verified are the bytes folded."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.provenance import sketch_of, write_sketch
from lora_merge.pack.skillpack import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_SKETCH, load_manifest, write_manifest
from lora_merge.pico import make_lora_pack, state_of


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fold_args(built, reg, out, *extra):
    return ("fold", "--general", built.gen_dir, "--adapters", "skill", "--adapters-dir", reg, "--weights", "1",
            "--out", out, *extra)


def edit_manifest(pack, **changes):
    m = json.loads((pack / "skill.json").read_text())
    m.update(changes)
    (pack / "skill.json").write_text(json.dumps(m))
    return m


@pytest.mark.parametrize("keep_sketch_hash", [True, False], ids=["sketch-hashed", "sketch-file-only"])
def test_a_format_2_pack_edited_down_to_format_1_is_invalid(built, reg, tmp_path, keep_sketch_hash):
    """The reproduction: format_version 1, the config's hash removed, lora_alpha 8 → 80 (10× the delta)."""
    m = json.loads((reg / "skill" / "skill.json").read_text())
    files = {k: v for k, v in m["files"].items() if k != ADAPTER_CONFIG and (keep_sketch_hash or k != BASE_SKETCH)}
    edit_manifest(reg / "skill", format_version=1, files=files)
    config = json.loads((reg / "skill" / ADAPTER_CONFIG).read_text())
    (reg / "skill" / ADAPTER_CONFIG).write_text(json.dumps({**config, "lora_alpha": 80}))
    res = cli("pack", "verify", "skill", "--adapters-dir", reg)
    assert res.exit_code == 2 and "edited down from format 2" in res.output, res.output
    res = cli(*fold_args(built, reg, tmp_path / "out"))
    assert res.exit_code == 2 and "edited down from format 2" in res.output and not (tmp_path / "out").exists()
    before = (reg / "skill" / "skill.json").read_bytes()
    assert cli("pack", "upgrade", "skill", "--adapters-dir", reg).exit_code == 2  # never re-hashed into format 2
    assert (reg / "skill" / "skill.json").read_bytes() == before


def test_a_format_1_manifest_holding_4_bit_settings_is_invalid(reg):
    m = json.loads((reg / "skill" / "skill.json").read_text())
    m["training"]["quantization_config"] = {"quant_type": "nf4", "block_size": 64, "compute_dtype": "float32",
                                            "quant_dtype": "float32", "double_quant": False}
    (reg / "skill" / BASE_SKETCH).unlink()
    edit_manifest(reg / "skill", format_version=1, training=m["training"],
                  files={ADAPTER_WEIGHTS: m["files"][ADAPTER_WEIGHTS]})
    res = cli("pack", "verify", "skill", "--adapters-dir", reg)
    assert res.exit_code == 2 and "training.quantization_config" in res.output, res.output


def resketch(built, pack, names):
    """Replace the pack's sketch by one of θpre at ``names`` and re-hash it (what an edit that knows the format does)."""
    write_sketch(pack, sketch_of(WeightSet.open(built.pre_dir), names, str(built.pre_dir)))
    write_manifest(pack, load_manifest(pack / "skill.json"))


def test_a_sketch_of_weights_the_pack_does_not_change_is_refused(built, reg, tmp_path, foreign):
    """Norm weights are 1.0 in θpre and in any fresh model: a sketch of them alone called a foreign θG a
    descendant ("cosine 1.0")."""
    norms = [n for n in WeightSet.open(built.pre_dir).keys() if "norm" in n]
    resketch(built, reg / "skill", norms)
    for general in (foreign, built.gen_dir):
        res = cli("fold", "--general", general, "--adapters", "skill", "--adapters-dir", reg, "--weights", "1",
                  "--out", tmp_path / "out")
        assert res.exit_code == 2 and "covers 0 of the 14 weights it changes" in res.output, res.output
        assert not (tmp_path / "out").exists()
    res = cli(*fold_args(built, reg, tmp_path / "out", "--allow-foreign-base"))
    assert res.exit_code == 0 and "covers 0 of the 14" in res.output
    assert json.loads((tmp_path / "out" / "lora_merge.json").read_text())["packs"][0]["base_check"] == "foreign-allowed"


def test_a_sketch_missing_a_few_changed_weights_is_compared_with_a_warning(built, reg, tmp_path):
    changed = sorted(n for n in WeightSet.open(built.pre_dir).keys() if n.endswith("_proj.weight"))
    resketch(built, reg / "skill", changed[2:])
    res = cli(*fold_args(built, reg, tmp_path / "out"))
    assert res.exit_code == 0 and "covers 12 of the 14 weights it changes" in res.output, res.output
    assert "descends from its base" in res.output


@pytest.fixture(scope="module")
def foreign(built, tmp_path_factory):
    from lora_merge.pico import pico_model, save_model

    return save_model(pico_model("llama", seed=7), tmp_path_factory.mktemp("foreign") / "model")


@pytest.mark.parametrize("swap", ["file", "folder"])
def test_a_pack_swapped_after_verification_folds_the_verified_bytes(built, reg, tmp_path, swap):
    """`pack import --force` renames a new pack into place: a fold that verified the old one must fold the old
    one (the bytes it hashed), never the new, unverified file under the old hash."""
    from lora_merge.fold.plan import plan_fold
    from lora_merge.fold.write import FoldRequest, fold, fold_plan

    shutil.copytree(reg / "skill", tmp_path / "orig")
    make_lora_pack(built.pre, built.pre_dir, tmp_path / "evil", "skill", seed=99)
    plan = plan_fold(FoldRequest(general=built.gen_dir, packs=["skill"], adapters_dir=reg, out=tmp_path / "out",
                                 weights=[1.0], progress=False))
    if swap == "file":
        os.replace(tmp_path / "evil" / ADAPTER_WEIGHTS, reg / "skill" / ADAPTER_WEIGHTS)
    else:
        os.rename(reg / "skill", tmp_path / "gone")
        os.rename(tmp_path / "evil", reg / "skill")
    fold_plan(plan)
    fold(FoldRequest(general=built.gen_dir, packs=[str(tmp_path / "orig")], out=tmp_path / "oracle", weights=[1.0],
                     progress=False))  # the oracle: the verified pack, folded untouched
    got, want = state_of(tmp_path / "out"), state_of(tmp_path / "oracle")
    assert all(torch.equal(got[k], want[k]) for k in want)
    recorded = json.loads((tmp_path / "out" / "lora_merge.json").read_text())["packs"][0]["sha256"]
    assert recorded == json.loads((tmp_path / "orig" / "skill.json").read_text())["files"]
