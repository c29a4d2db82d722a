import sys
from pathlib import Path

# Benchmark tests import the repo (the product and `benchmarks`).
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
