"""Training a skill pack or a model: data formats, training recipes, the trainer and what a run writes.

Empty on purpose: importing one module of this package loads only what that module needs."""
