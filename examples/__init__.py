"""Worked examples for CONTRIBUTING.md (CI runs them)."""
