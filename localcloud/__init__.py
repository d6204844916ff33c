"""localcloud: run template.yaml locally on moto, with the real state machine and the real handlers."""

import sys
from pathlib import Path

# The handlers' code (CodeUri: functions/) is also what localcloud reads manifests and WAVs with.
_FUNCTIONS = str(Path(__file__).resolve().parent.parent / "functions")
if _FUNCTIONS not in sys.path:
    sys.path.insert(0, _FUNCTIONS)
