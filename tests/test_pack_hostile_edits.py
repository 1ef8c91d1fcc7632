"""Issue 15: hostile edits of a pack's adapter_config.json and skill.json, through the CLI.

Hypothesis mutates fields of both files (random JSON, removed fields, wrong types, huge numbers, odd strings)
and runs `pack verify` and `fold` (with --no-verify, so the fold's own parsing is exercised too). Each run
must end in exit 0 or 2 with no traceback, and a refused fold must leave nothing in the output's folder.
Bounded: 25 examples, a pico pack.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_merge.cli import main

odd_numbers = st.sampled_from([0, -1, 10**400, -(10**30), 1e308, 2**63, 0.0, -0.0, 1e-320])
odd_strings = st.sampled_from(["", "(.|.|.)*z", "(", "[", "../x", "/dev/zero", "\x1b[2J", "8", "true", "nan", "x" * 300])
scalars = (st.none() | st.booleans() | st.integers() | odd_numbers | st.floats() | st.text(max_size=12)
           | odd_strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | odd_strings, inner, max_size=3),
    max_leaves=8,
)
CONFIG_FIELDS = ["r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "fan_in_fan_out", "peft_type",
                 "use_dora", "target_modules", "modules_to_save", "layer_replication", "base_model_name_or_path"]
MANIFEST_FIELDS = ["name", "kind", "format_version", "data", "data.instances", "data.tokens", "files",
                   "files.adapter_config.json", "recommended_weight", "training", "base_model", "description",
                   "evaluation", "license"]
edits = st.lists(
    st.tuples(st.sampled_from(["adapter_config.json", "skill.json"]),
              st.sampled_from(CONFIG_FIELDS + MANIFEST_FIELDS) | st.text(max_size=6),
              st.booleans(),  # remove the field instead of setting it
              json_values),
    min_size=1, max_size=4,
)


def apply(pack: Path, fname: str, field: str, remove: bool, value: object) -> None:
    path = pack / fname
    doc = json.loads(path.read_text())
    where, key = doc, field
    if fname == "skill.json" and "." in field:
        head, key = field.split(".", 1)
        where = doc.get(head)
        if not isinstance(where, dict):
            where = doc[head] = {}
    if remove:
        where.pop(key, None)
    else:
        where[key] = value
    path.write_text(json.dumps(doc))


def no_traceback(res) -> None:
    assert res.exit_code in (0, 2), (res.exit_code, res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(edits=edits, by_size=st.booleans())
def test_mutated_pack_files_end_in_exit_0_or_2_and_a_refused_fold_writes_nothing(built, edits, by_size):
    root = Path(tempfile.mkdtemp(prefix="lora_merge_trust-"))
    try:
        pack = shutil.copytree(built.pack, root / "adapters" / "skill")
        for fname, field, remove, value in edits:
            apply(pack, fname, field, remove, value)
        runner = CliRunner()
        no_traceback(runner.invoke(main, ["pack", "verify", str(pack)]))
        out = root / "models" / "merged"
        omega = ["--general-size", "1000"] if by_size else ["--weights", "0.5"]
        res = runner.invoke(main, ["fold", "--general", str(built.gen_dir), "--adapters", str(pack), "--out", str(out),
                                   "--no-verify", *omega])
        no_traceback(res)
        if res.exit_code == 2:
            assert not (root / "models").exists() or not any((root / "models").iterdir())
    finally:
        shutil.rmtree(root, ignore_errors=True)
