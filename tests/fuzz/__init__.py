"""Attacks kept as fast seeded regression tests: one file per attack (issue 10, item 12)."""
