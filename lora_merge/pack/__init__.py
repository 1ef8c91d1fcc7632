"""Skill packs: the format, creating, inspecting, sharing and merging them, and τ read from one.

Empty on purpose: importing one module of this package loads only what that module needs."""
