"""Bad input to `cli.py fold`: one clear line, exit code 2, no output folder left behind."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.pico import make_lora_pack, pico_model, save_model


@pytest.fixture
def world(tmp_path, pico_dirs):
    pre, _gen, pre_dir, gen_dir = pico_dirs
    reg = tmp_path / "adapters"
    make_lora_pack(pre, pre_dir, reg / "good", "good", seed=1, instances=100)
    return tmp_path, reg, pre, pre_dir, gen_dir


def run_fold(reg, gen_dir, out, *extra):
    args = ["fold", "--general", str(gen_dir), "--adapters-dir", str(reg), "--out", str(out), *extra]
    return CliRunner().invoke(main, args)


def assert_clean_failure(result, out, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".lora_merge.{out.name}.*"))


def test_good_fold_through_cli(world):
    tmp, reg, *_rest, gen_dir = world
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good", "--general-size", "400")
    assert res.exit_code == 0, res.output
    assert "ω = 0.25" in res.output and (tmp / "out" / "model.safetensors").exists()


def test_other_architecture(world):
    tmp, reg, _pre, _pre_dir, gen_dir = world
    gpt2 = pico_model("gpt2")
    make_lora_pack(gpt2, save_model(gpt2, tmp / "gpt2"), reg / "gpt2skill", "gpt2skill", seed=1,
                   target_modules=["c_attn"], fan_in_fan_out=True)
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "gpt2skill", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "gpt2skill")


def test_wrong_shapes(world):
    tmp, reg, _pre, _pre_dir, gen_dir = world
    wide = pico_model("llama", hidden=64)
    make_lora_pack(wide, None, reg / "wide", "wide", seed=1, target_modules=["q_proj"])
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "wide", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "shape", "(64, 64)", "(32, 32)")


def test_missing_adapter_files(world):
    tmp, reg, *_rest, gen_dir = world
    (reg / "good" / "adapter_model.safetensors").unlink()
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "adapter_model.safetensors")
    (reg / "good" / "adapter_config.json").unlink()
    (reg / "good" / "skill.json").unlink()
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "not a skill pack")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_adapter_safetensors(world, damage):
    tmp, reg, *_rest, gen_dir = world
    f = reg / "good" / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 64)
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good", "--weights", "1", "--no-verify")
    assert_clean_failure(res, tmp / "out", "adapter_model.safetensors")


def test_truncated_general_model(world):
    tmp, reg, *_rest, gen_dir = world
    f = gen_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "model.safetensors")


def test_pickle_adapter_refused_and_never_loaded(world):
    tmp, reg, *_rest, gen_dir = world
    pk = reg / "pickled"
    pk.mkdir()
    shutil.copy(reg / "good" / "adapter_config.json", pk)
    # a pickle that would create a file if it were ever unpickled
    marker = tmp / "pwned"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Boom()}, pk / "adapter_model.bin")
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "pickled", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "pickle", "safetensors")
    assert not marker.exists()


def test_existing_output_without_force_is_left_alone(world):
    tmp, reg, *_rest, gen_dir = world
    out = tmp / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run_fold(reg, gen_dir, out, "--adapters", "good", "--weights", "1")
    assert res.exit_code == 2 and "--force" in res.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    res = run_fold(reg, gen_dir, out, "--adapters", "good", "--weights", "1", "--force")
    assert res.exit_code == 2 and "not a merged model" in res.output  # --force replaces only an earlier fold (issue 35)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    res = run_fold(reg, gen_dir, out, "--adapters", "good", "--weights", "1", "--force")
    assert res.exit_code == 0 and (out / "lora_merge.json").is_file()  # an empty folder is replaced


def test_unknown_pack_name(world):
    tmp, reg, *_rest, gen_dir = world
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "nope", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "nope", "good")  # names the known packs


def test_missing_general_size(world):
    tmp, reg, *_rest, gen_dir = world
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good")
    assert_clean_failure(res, tmp / "out", "--general-size", "--weights")


def test_bad_weights_and_hash_mismatch(world):
    tmp, reg, *_rest, gen_dir = world
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good", "--weights", "0.1,0.2")
    assert_clean_failure(res, tmp / "out", "one per pack")
    manifest = json.loads((reg / "good" / "skill.json").read_text())
    manifest["files"]["adapter_model.safetensors"] = "0" * 64
    (reg / "good" / "skill.json").write_text(json.dumps(manifest))
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "sha256 mismatch")


def test_dora_refused(world):
    tmp, reg, pre, pre_dir, gen_dir = world
    make_lora_pack(pre, pre_dir, reg / "dora", "dora", seed=1, target_modules=["q_proj"], use_dora=True)
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "dora", "--weights", "1")
    assert_clean_failure(res, tmp / "out", "DoRA")


def test_pack_inspect(world):
    tmp, reg, *_ = world
    res = CliRunner().invoke(main, ["pack", "inspect", "good", "--adapters-dir", str(reg)])
    assert res.exit_code == 0, res.output
    for needle in ("|D| instances", "100", "rank / alpha", "4 / 8", "adapter_model.safetensors: ok (sha256 ok)", "q_proj"):
        assert needle in res.output, needle


def test_cuda_without_gpu_is_a_clear_error(world):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    tmp, reg, *_rest, gen_dir = world
    res = run_fold(reg, gen_dir, tmp / "out", "--adapters", "good", "--weights", "1", "--device", "cuda")
    assert_clean_failure(res, tmp / "out", "no CUDA GPU")


def test_console_script_has_the_same_commands():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "lora-merge"
    if not script.exists():
        pytest.skip("package not installed as a console script in this environment")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    for command in main.commands:
        assert command in out
