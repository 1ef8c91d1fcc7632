"""The `lora-merge` / `python cli.py` command line: a thin layer over the library.

Each sub-command lives in ``lora_merge/commands/`` and only parses options and
calls one library function. A :class:`LoraMergeError` is printed as one line
(no traceback) and exits with status 2.

Start-up stays light: the command modules import click and torch-free helpers only, and import the library
inside each command, so `--help`, `pack inspect` or `data list` never load torch, and `fold` never loads
transformers (tests/test_cli_startup.py).
"""

from __future__ import annotations

import logging
import os
import sys

import click

from lora_merge import __version__
from lora_merge.commands.compare import compare_cmd
from lora_merge.commands.data import data
from lora_merge.commands.data_distill import distill_cmd
from lora_merge.commands.demo import demo_cmd
from lora_merge.commands.evaluate import eval_cmd
from lora_merge.commands.extract import extract_cmd
from lora_merge.commands.fold import fold_cmd
from lora_merge.commands.interference import interference_cmd
from lora_merge.commands.pack import inspect_cmd, pack
from lora_merge.commands.pack_create import create_cmd
from lora_merge.commands.pack_merge import merge_cmd
from lora_merge.commands.share import export_cmd, import_cmd, upgrade_cmd, verify_cmd
from lora_merge.commands.study import study, study_compare, study_map
from lora_merge.commands.sweep import sweep_cmd
from lora_merge.commands.train import train_cmd
from lora_merge.commands.walkthrough import walkthrough_cmd
from lora_merge.core import console
from lora_merge.core.errors import LoraMergeError
from lora_merge.core.printable import printable


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


# Every command is added here and only here: a command module defines its commands and registers nothing.
for _cmd in (inspect_cmd, verify_cmd, upgrade_cmd, export_cmd, import_cmd, merge_cmd, create_cmd, interference_cmd):
    pack.add_command(_cmd)
data.add_command(distill_cmd)
for _cmd in (fold_cmd, pack, walkthrough_cmd, extract_cmd, eval_cmd, compare_cmd, sweep_cmd, train_cmd, demo_cmd, study,
             study_compare, study_map, data):
    main.add_command(_cmd)


def run() -> None:
    """The `python cli.py` / `lora-merge` entry point: :func:`main`, then a quick exit.

    Once torch is imported, tearing the interpreter down after the command adds a wait to every command (module
    finalisers; docs/benchmarks.md, "Start-up") and does nothing a user needs: by then every output is written,
    closed and renamed into place. So the process flushes stdout, stderr and logging and leaves with ``os._exit``.
    Not in a distributed run (torchrun and accelerate want an orderly exit), and not when :func:`main` is called
    from Python (tests call it), nor when a command ends in an exception other than a plain exit (its traceback prints as usual).
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
