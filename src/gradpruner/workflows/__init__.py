"""Workflows: the recipe (one function per step), the stage commands, `run`, its journal, and
`compare`."""
