"""Model weights on disk: safetensors reading and writing, numerics checks, layout fingerprints.

Empty on purpose: importing one module of this package loads only what that module needs."""
