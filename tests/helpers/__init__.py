"""Importable helpers for tests (modules that unpickling in a subprocess must find by name)."""
