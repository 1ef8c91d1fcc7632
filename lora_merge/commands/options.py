"""Options shared by the commands: one name, one meaning, one help text (tests/test_commands_options.py checks it).

Torch-free: every command module imports this at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from lora_merge.core.errors import LoraMergeError
from lora_merge.core.names import split_names  # noqa: F401  (re-exported: the commands import it from here)

# The help of each shared option; a command may add a sentence after it, never change its meaning.
SHARED_HELP = {
    "--adapters": "Skill packs, comma separated: names under --adapters-dir or paths.",
    "--adapters-dir": "Folder where pack names are looked up.",
    "--weights": "ω per pack, comma separated, in --adapters order (e.g. 0.24,0.57).",
    "--json": "Write the numbers as JSON to this file ('-' prints them to stdout instead of the text report).",
    "--device": "cpu or cuda: where the arithmetic runs.",
    "--base": "Pretrained base model θpre: a folder, or org/name from the local Hugging Face cache.",
    "--general": "General model θG (safetensors): a folder, or org/name from the local Hugging Face cache.",
    "--allow-foreign-base": "Go on with packs whose base cannot be shown to be the right one: fold into a θG that "
                            "does not descend from a pack's base, or merge packs not shown to share one base (what "
                            "was allowed is printed and recorded: lora_merge.json, the merged pack's skill.json).",
}


def shared(name: str, *decls: str, extra: str = "", **kw):
    """The shared option ``name`` (see SHARED_HELP), with an optional sentence added to its help."""
    defaults = {
        "--adapters": {},
        "--adapters-dir": {"default": "adapters", "show_default": True, "type": click.Path(path_type=Path)},
        "--weights": {"default": None},
        "--json": {"default": None, "metavar": "PATH|-"},
        "--device": {"default": "cpu", "show_default": True},
        "--base": {"default": None, "type": MODEL},
        "--general": {"type": MODEL},
        "--allow-foreign-base": {"is_flag": True},
    }[name]
    help_text = SHARED_HELP[name] + (f" {extra}" if extra else "")
    return click.option(name, *decls, **{**defaults, **kw}, help=help_text)


def given_options(ctx: click.Context) -> dict[str, Any]:
    """The options the user gave on the command line, by name, as click converted them: defaults are left out,
    so whatever else the command reads (a merge recipe) stands where the user said nothing."""
    return {name: value for name, value in ctx.params.items()
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}


def write_json(value, path: str, echo_note: bool = True) -> None:
    """The --json rule: '-' prints the JSON to stdout, a path gets the file (written whole)."""
    import json

    text = json.dumps(value, indent=2, ensure_ascii=True) + "\n"  # JSON escapes every control character
    if path == "-":
        click.echo(text, nl=False)
        return
    out = Path(path)
    from lora_merge.core.output import replace_file

    replace_file(out, text)
    if echo_note:
        click.echo(f"numbers → {out}")


def renamed(old: str, new: str, command: str):
    """A hidden old spelling that stops with the new name (kept one release; its old meaning clashed)."""

    def refuse(ctx, param, value):
        if value is not None:
            raise click.UsageError(f"{command} {old} was renamed {new} (one meaning per option across commands); "
                                   f"write {new} {value}", ctx)
        return value

    return click.option(old, hidden=True, expose_value=False, callback=refuse, default=None,
                        help=f"Renamed {new}.")


class SizeType(click.ParamType):
    """A byte size (5GB, 500MB, 2GiB, 1024) parsed with the options, so a bad one stops the command before
    anything is created (0, -1, abc, nan and inf are refused)."""

    name = "size"

    def convert(self, value, param, ctx) -> int:
        from lora_merge.io.shards import parse_size

        try:
            return parse_size(value)
        except LoraMergeError as e:
            self.fail(str(e), param, ctx)


SIZE = SizeType()


class ModelType(click.ParamType):
    """A model folder, or ``org/name`` from the local Hugging Face cache (:func:`lora_merge.core.hub.resolve_model`;
    never downloaded). A reference that is not cached stops the command with a LoraMergeError saying how to get it."""

    name = "model"

    def convert(self, value, param, ctx) -> Path:
        if isinstance(value, Path):
            return value
        from lora_merge.core.hub import resolve_model

        return resolve_model(value, param.opts[0] if param is not None and param.opts else "model")


MODEL = ModelType()
