"""The reliability suite imports the shared test modules (tinydata, workers, prepare_reference) from tests/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
