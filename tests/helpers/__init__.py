"""Importable helpers for tests (modules that unpickling in a subprocess must find by name)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
