"""Transfer diagnostics of Ma et al. (VAST 2020), as pure numerics.

One concern per module; each public function validates its inputs and calls a private numeric core.
Imports torch, numpy, scipy, sklearn and captum only — never mlflow or panel (tests/test_import_rules.py).
"""
