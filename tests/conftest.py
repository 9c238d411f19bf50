"""Shared pytest set-up: makes ``tests/helpers.py`` importable as ``helpers`` from every test folder."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
