"""Test-wide settings: never reach the network, keep CPU use modest."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# One thread: on a 2-core machine two threads spin-wait on each other far more than they gain.
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture
def torch_threads_restored():
    """``--threads`` caps torch for the whole process: give the test process its count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
