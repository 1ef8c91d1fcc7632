"""CLI sub-commands, one module per command family (see lora_merge/cli.py)."""
