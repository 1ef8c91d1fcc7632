"""The `lora-merge` / `python cli.py` command line: a thin layer over the library.

Each sub-command lives in ``lora_merge/commands/`` and only parses options and
calls one library function. A :class:`LoraMergeError` is printed as one line
(no traceback) and exits with status 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from lora_merge import __version__
from lora_merge.errors import LoraMergeError

# Modules under lora_merge.commands that add commands to the group (each exposes COMMANDS).
COMMAND_MODULES = ["fold", "pack", "share", "walkthrough", "extract", "interference", "evaluate", "sweep", "train", "demo", "study", "data"]


class FriendlyGroup(click.Group):
    """A click group that turns LoraMergeError into a clean message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LoraMergeError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted: nothing was written", fg="yellow", err=True)
            sys.exit(130)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lora-merge")
def main() -> None:
    """Add skills to language models by folding task vectors (Merge to Learn, arXiv 2410.12937)."""


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"lora_merge.commands.{_name}")
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)


if __name__ == "__main__":
    main()
