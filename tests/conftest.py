import sys
from pathlib import Path

import pytest
import torch

# Test helper modules (toys.py, oracle.py, recipe_runner.py) live next to the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' networks are tiny: one intra-op thread is faster and steadier than
    several competing for the cores (OpenMP threads spin when oversubscribed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
