"""Shared test set-up: the oracle module sits beside the tests; nothing may reach the network."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The tests use tiny models, for which OpenMP's thread start-up costs more than it saves; on a
    # loaded 2-core machine it made them up to 100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
