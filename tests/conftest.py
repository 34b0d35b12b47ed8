"""Shared fixtures."""

import pytest
import torch


@pytest.fixture()
def one_thread():
    """Run a test's torch work on one thread: the tensors in unit tests are small, and the machine's
    two cores are shared with other processes, where two threads each thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
