"""Scoring models: eval sets, generation and likelihood scores, refusals, reports, ω sweeps.

Empty on purpose: importing one module of this package loads only what that module needs."""
