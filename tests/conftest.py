"""Shared pytest set-up: makes ``tests/helpers.py`` importable as ``helpers`` from every test folder."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))

import pytest
import torch


@pytest.fixture
def single_thread():
    """Run a test on one torch thread. Tiny tensors gain nothing from two threads, and on a busy
    shared machine a thread that waits for a descheduled partner makes each op take milliseconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
