"""The names options accept (merge rules, paper variants, float dtypes), torch-free so the command line can list
them in --help without importing the modules that implement them (`rules/combine.py`, `fold/write.py`, `pack/extract.py`; a test
checks the two lists agree)."""

from __future__ import annotations

RULE_NAMES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
VARIANT_NAMES = ("linear_interp", "wise_ft")
METHOD_NAMES = RULE_NAMES + VARIANT_NAMES
FLOAT_DTYPE_NAMES = ("float32", "bfloat16", "float16")
