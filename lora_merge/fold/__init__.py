"""Folding packs into a general model: the request, the plan, the streamed write and the merge recipe.

Empty on purpose: importing one module of this package loads only what that module needs."""
