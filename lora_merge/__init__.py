"""lora_merge: add skills to language models by merging task vectors.

Implements "Merge to Learn" (Morrison et al., arXiv 2410.12937): a skill is
trained alone as a LoRA (or full-parameter) update from the pretrained base,
materialised as a task vector τ, scaled by ω (by default |D|/|G|) and folded
into a general model: θ = θG + Σk ωk·τk.
"""

from lora_merge.core.errors import LoraMergeError

__version__ = "0.1.0"

__all__ = ["LoraMergeError", "__version__"]
