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


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="where the recipe tests train (cpu, cuda, cuda:1); the rest runs on the CPU")


@pytest.fixture(scope="session")
def device(request) -> str:
    """The ``--device`` the suite was asked to run recipes on (checked to exist)."""
    name = request.config.getoption("--device")
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        pytest.exit(f"--device {name}: torch sees no GPU here", returncode=4)
    return name
