"""Start-up: each command imports only what it needs (issue 21). Run in fresh subprocesses, so nothing the test
session imported hides a heavy import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "matplotlib", "accelerate", "numba")
PROBE = """
import json, sys
sys.argv = ["cli.py", *json.loads(sys.argv[1])]
from lora_merge.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
print("\\nMODULES=" + json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def imported(args: list[str]) -> list[str]:
    """The heavy modules a whole `cli.py ARGS` run imported."""
    probe = PROBE.replace("{heavy}", repr(HEAVY))
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.rsplit("MODULES=", 1)[1])


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory):
    from lora_merge.pico import make_lora_pack, pico_model

    root = tmp_path_factory.mktemp("startup")
    make_lora_pack(pico_model("llama"), None, root / "adapters" / "skill", "skill")
    return root


def test_light_commands_import_no_torch(pack_dir):
    ad = ["--adapters-dir", str(pack_dir / "adapters")]
    for args in (["--help"], ["fold", "--help"], ["sweep", "--help"], ["train", "--help"], ["data", "list"],
                 ["data", "write", "science", "--out", str(pack_dir / "science")],
                 ["pack", "inspect", "skill", *ad], ["pack", "verify", "skill", *ad],
                 ["pack", "export", "skill", *ad, "--out", str(pack_dir / "skill.tar.gz")],
                 ["pack", "import", str(pack_dir / "skill.tar.gz"), "--adapters-dir", str(pack_dir / "imported")],
                 ["pack", "upgrade", "skill", *ad]):
        assert imported(args) == [], args
    assert (pack_dir / "imported" / "skill" / "skill.json").is_file()  # the import did run
    runs = []
    for name, correct in (("base", True), ("cand", False)):  # two `eval --out` folders' samples, one item each
        (pack_dir / name).mkdir(exist_ok=True)
        sample = {"group": "g", "file": "f", "id": "f/0", "index": 0, "item_hash": "0" * 16, "metric": "exact",
                  "correct": correct}
        (pack_dir / name / "samples.jsonl").write_text(json.dumps(sample) + "\n")
        runs.append(str(pack_dir / name))
    assert imported(["compare", *runs, "--json", str(pack_dir / "compare.json")]) == []
    assert json.loads((pack_dir / "compare.json").read_text())["sets"][0]["delta"] == -100.0  # compare did run
    assert (pack_dir / "science" / "train.jsonl").is_file()  # so did the data write


def test_fold_imports_torch_only(pack_dir, pico_dirs):
    _pre, _gen, _pre_dir, gen_dir = pico_dirs
    heavy = imported(["fold", "--general", str(gen_dir), "--adapters", "skill", "--adapters-dir",
                      str(pack_dir / "adapters"), "--weights", "0.5", "--out", str(pack_dir / "merged")])
    assert (pack_dir / "merged" / "config.json").is_file()
    assert heavy == ["torch"]  # the pruning rules' compiled loops (numba) only for those rules:
    heavy = imported(["fold", "--general", str(gen_dir), "--adapters", "skill", "--adapters-dir",
                      str(pack_dir / "adapters"), "--weights", "0.5", "--out", str(pack_dir / "ties"),
                      "--method", "ties", "--density", "0.5"])
    assert (pack_dir / "ties" / "config.json").is_file()
    assert heavy == ["numba", "torch"]


def test_bit_scan_counts_like_torch(tmp_path):
    """`pack verify/import` read NaN/Inf from the raw bits (no torch): the counts equal torch's."""
    import torch
    from safetensors.torch import save_file

    from lora_merge.io.numerics import BadValues, scan_file

    base = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), -2.0, float("nan"), 0.0, -float("inf")])
    tensors = {str(dt): base.to(dt) for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
    tensors["ok"], tensors["int"] = torch.ones(3), torch.arange(4)
    save_file(tensors, tmp_path / "t.safetensors")
    found = dict(scan_file(tmp_path / "t.safetensors", "p"))
    assert set(found) == {str(dt) for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
    assert all(v == BadValues.count(base).describe() == "2 NaN, 1 +Inf, 2 -Inf" for v in found.values())


def test_the_quick_exit_loses_no_output(pack_dir, pico_dirs, tmp_path):
    """`python cli.py` leaves with os._exit once torch is loaded: what it printed (to a pipe, block-buffered) and
    wrote must all be there, and errors keep their message and exit status."""
    _pre, _gen, _pre_dir, gen_dir = pico_dirs
    args = [sys.executable, "cli.py", "fold", "--general", str(gen_dir), "--adapters", "skill", "--adapters-dir",
            str(pack_dir / "adapters"), "--weights", "0.5", "--out", str(tmp_path / "merged")]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"→ {tmp_path / 'merged'}" in done.stdout and "recipe:" in done.stdout.splitlines()[-1]
    assert (tmp_path / "merged" / "lora_merge.json").is_file()
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
