"""One meaning per option across commands, help text on every option (issue 18 item 7)."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from lora_merge.cli import main
from lora_merge.commands.options import SHARED_HELP


def commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    """Every leaf command by its full name ('pack inspect')."""
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        out.update(commands(cmd, full + " ") if isinstance(cmd, click.Group) else {full: cmd})
    return out


def options(cmd: click.Command) -> dict[str, click.Option]:
    return {o: p for p in cmd.params if isinstance(p, click.Option) and not p.hidden for o in p.opts}


def test_every_option_and_command_has_help():
    missing = [f"{c} {o}" for c, cmd in commands().items() for o, p in options(cmd).items() if not p.help]
    missing += [f"main {o}" for o, p in options(main).items() if not p.help]
    assert not missing, missing
    assert all(cmd.help for cmd in commands().values())


def test_shared_options_mean_one_thing():
    # the same name, the same meaning: help starts with the one shared text, and a value is always expected
    strict = ("--adapters", "--weights", "--json", "--device")
    for c, cmd in commands().items():
        for name in strict:
            p = options(cmd).get(name)
            if p is not None:
                assert p.help.startswith(SHARED_HELP[name]), (c, name, p.help)
                assert not p.is_flag, (c, name)
    by_name: dict[str, set[str]] = {}
    for c, cmd in commands().items():
        for o in options(cmd):
            by_name.setdefault(o, set()).add(c)
    assert by_name["--weights"] == {"fold", "pack merge"}  # per-pack ω, never a grid
    assert by_name["--mode"] == {"train"}  # the training mode; the sweep's fold route is --fold-mode
    assert by_name["--omegas"] == {"sweep"}
    assert {"fold", "sweep", "pack merge", "pack interference"} <= by_name["--adapters"]


def test_renamed_options_say_the_new_name():
    for old, new in (("--weights", "--omegas"), ("--mode", "--fold-mode")):
        r = CliRunner().invoke(main, ["sweep", old, "1", "--general", "g", "--adapters", "a", "--evals", "x=y",
                                      "--out", "o"])
        assert r.exit_code == 2 and new in r.output, r.output


def test_choice_lists_agree_with_the_library():
    from lora_merge.commands import share, sweep
    from lora_merge.core import choices
    from lora_merge.fold import write as fold
    from lora_merge.pack import extract, sharing
    from lora_merge.rules import combine
    from lora_merge.rules import omega as weights

    assert choices.RULE_NAMES == tuple(combine.RULES)
    assert choices.VARIANT_NAMES == tuple(combine.VARIANT_METHODS)
    assert set(choices.FLOAT_DTYPE_NAMES) == set(extract.PACK_DTYPES) == set(fold.OUTPUT_DTYPES)
    assert share.DEFAULT_MAX_IMPORT == sharing.DEFAULT_MAX_IMPORT
    assert sweep.PAPER_GRID == weights.PAPER_GRID


def test_json_dash_prints_json_only(tmp_path):
    from lora_merge.pico import make_lora_pack, pico_model

    make_lora_pack(pico_model("llama"), None, tmp_path / "reg" / "skill", "skill")
    r = CliRunner().invoke(main, ["pack", "inspect", "skill", "--adapters-dir", str(tmp_path / "reg"), "--json", "-"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["name"] == "skill"
    r = CliRunner().invoke(main, ["pack", "inspect", "skill", "--adapters-dir", str(tmp_path / "reg"),
                                  "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0 and "rank / alpha" in r.output
    assert json.loads((tmp_path / "m.json").read_text())["name"] == "skill"
