"""Reliability suite (marker ``reliability``): bad input, cancellation storms, soak, faults.

A package (unlike ``tests/unit`` and ``tests/e2e``) so that its own ``conftest.py`` is
imported as ``reliability.conftest`` and never shadows ``tests/conftest.py``, which other
test modules import by the plain name ``conftest``.
"""
