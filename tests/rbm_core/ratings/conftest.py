import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """These tests are small: one thread avoids oversubscribing a shared machine (measured up to
    15x slower with two threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
