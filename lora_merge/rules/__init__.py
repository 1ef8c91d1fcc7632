"""The rules of a fold: how ω is chosen (omega) and how scaled task vectors combine per tensor (combine).

Empty on purpose: importing one module of this package loads only what that module needs."""
