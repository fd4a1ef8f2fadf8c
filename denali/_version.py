"""The version of denali: the single place it is written (pyproject.toml reads it)."""

__version__ = "0.2.0"
