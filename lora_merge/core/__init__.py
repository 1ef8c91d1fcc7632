"""Foundations every stage uses: errors, console, output folders, names, records and cards.

Empty on purpose: importing one module of this package loads only what that module needs."""
