"""Training on CPU scores only the positions whose loss counts (the completion), as TRL does on a GPU.

TRL's SFTTrainer replaces the model's LM head by a chunked log-probability kernel. On Triton devices it scores only
the labelled positions (the completion); elsewhere it scores every position and masks the prompt's afterwards,
because on XLA-like devices a shape that changes with each batch forces a recompilation. CPU eager mode has no
such cost, and with a 49k-token vocabulary the head is a third of a training step on the prompt positions alone,
whose loss is masked anyway. :func:`completion_positions_only` makes TRL take its compact path on CPU: the same
kernel (so logit scaling and soft-capping stay TRL's), the same loss, less work. tests/test_train_completion_logits.py
checks the loss and the gradients equal TRL's own path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# Where TRL decides whether to compact (trl/trainer/utils.py, the fused LM head's forward). Looked up by name:
# a TRL without it trains as before, only slower (the test above fails, so an upgrade that moves it is noticed).
_MODULE = "trl.trainer.utils"
_DECIDER = "_use_triton"


@contextmanager
def completion_positions_only(cuda: bool) -> Iterator[bool]:
    """While inside, TRL's fused LM head scores only labelled positions on CPU too. Yields whether it applies
    (False on CUDA, where TRL already does, or when this TRL has no such switch)."""
    import importlib

    module = importlib.import_module(_MODULE)
    original = getattr(module, _DECIDER, None)
    if cuda or original is None:
        yield False
        return

    def compact_on_cpu(device) -> bool:
        return device.type == "cpu" or original(device)

    setattr(module, _DECIDER, compact_on_cpu)
    try:
        yield True
    finally:
        setattr(module, _DECIDER, original)
