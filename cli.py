#!/usr/bin/env python
"""Entry point: `python cli.py COMMAND …` (the same commands as the `lora-merge` script)."""

from lora_merge.cli import run

if __name__ == "__main__":
    run()
