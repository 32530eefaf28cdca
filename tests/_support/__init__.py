"""Plain helpers the test files import (``pythonpath = ["tests"]`` in pyproject.toml).

Fixtures stay in the ``conftest.py`` files; what lives here are values and functions that
module-level factories need at import time, where a fixture cannot reach.
"""
