import sys
from pathlib import Path

# Test helper modules (toys.py, oracle.py) live next to the tests.
sys.path.insert(0, str(Path(__file__).parent))
