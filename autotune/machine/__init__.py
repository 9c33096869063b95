"""The machine: what it has (hardware), how it is found (detect) and what a
process may really use (cgroups)."""
