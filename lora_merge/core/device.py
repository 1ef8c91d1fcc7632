"""Which torch device a command computes on: cpu, or cuda when one is there."""

from __future__ import annotations

import torch

from lora_merge.core.errors import LoraMergeError


def resolve_device(device: str) -> torch.device:
    """The device named by ``--device``; asking for cuda without a GPU is a user error, not a crash."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoraMergeError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise LoraMergeError(f"--device {device!r}: use cpu or cuda")
    return torch.device(device)
