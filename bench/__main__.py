"""``python -m bench``: the benchmarks' one table (see ``bench/suite.py`` and bench/README.md).

The benchmark scripts import each other by module name (``machine_load``, ``loader_throughput``), as
they do when run as ``python bench/<script>.py``; this puts ``bench/`` on the path first.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite

if __name__ == "__main__":
    sys.exit(suite.main())
