"""The Merge-to-Learn study on a real pretrained model (SmolLM2-135M-Instruct, shipped as GGUF on PyPI)."""
