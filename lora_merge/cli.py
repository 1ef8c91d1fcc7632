"""The `lora-merge` / `python cli.py` command line: a thin layer over the library.

Each sub-command lives in ``lora_merge/commands/`` and only parses options and
calls one library function. A :class:`LoraMergeError` is printed as one line
(no traceback) and exits with status 2.

Start-up stays light: the command modules import click and torch-free helpers only, and import the library
inside each command, so `--help`, `pack inspect` or `data list` never load torch, and `fold` never loads
transformers (tests/test_startup.py).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from lora_merge import __version__
from lora_merge.core import console
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.printable import printable

# Modules under lora_merge.commands that add commands to the group (each exposes COMMANDS).
COMMAND_MODULES = ["fold", "pack", "share", "pack_merge", "pack_create", "walkthrough", "extract", "interference", "evaluate", "sweep", "train", "demo", "study", "data"]


class FriendlyGroup(click.Group):
    """A click group that turns LoraMergeError into a clean message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LoraMergeError as e:
            click.secho(f"error: {printable(e, keep=chr(10))}", fg="red", err=True)  # may quote a pack's strings
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted: nothing was written", fg="yellow", err=True)
            sys.exit(130)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lora-merge")
@click.option("--quiet", "-q", is_flag=True, help="Only results, warnings about them and errors: no bars, no progress "
              "messages, no library info logs.")
@click.option("--no-progress", is_flag=True, help="No progress bars (messages stay).")
def main(quiet: bool, no_progress: bool) -> None:
    """Add skills to language models by folding task vectors (Merge to Learn, arXiv 2410.12937).

    Global options go before the command: lora-merge --quiet fold …
    """
    console.configure(progress=not no_progress, quiet=quiet)


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"lora_merge.commands.{_name}")
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)


def run() -> None:
    """The `python cli.py` / `lora-merge` entry point: :func:`main`, then a quick exit.

    Once torch is imported, tearing the interpreter down after the command costs ≈ 0.3 s (module finalisers)
    and does nothing a user needs: by then every output is written, closed and renamed into place. So the
    process flushes stdout, stderr and logging and leaves with ``os._exit``. Not in a distributed run (torchrun
    and accelerate want an orderly exit), and not when :func:`main` is called from Python (tests call it), nor
    when a command ends in an exception other than a plain exit (its traceback prints as usual).
    """
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    if "torch" not in sys.modules or os.environ.get("WORLD_SIZE"):
        sys.exit(code)
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
