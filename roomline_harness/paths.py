"""Where things are: the repository root and the captured test data."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the working directory of every subprocess the tests start).
ROOT = Path(__file__).resolve().parents[1]
#: Captured packets and other recorded inputs (``tests/data``).
DATA = ROOT / "tests" / "data"
