"""Report progress and metrics from inside a job — standard library only, any framework.

    import gpuyard
    for step in range(total):
        ...
        gpuyard.report(step=step + 1, total=total, loss=loss, accuracy=acc)

Each call appends one JSON line to $GPUYARD_METRICS_FILE, which the worker tails and forwards. Outside
gpuyard (no such variable) it does nothing, so the same script runs anywhere.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

METRICS_ENV = "GPUYARD_METRICS_FILE"


def _clean(value: Any) -> Any:
    """A JSON-safe scalar: numbers stay numbers (NaN and infinities become null), the rest a string."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = value if isinstance(value, float) else float(value)  # numpy and torch scalars
    except Exception:  # noqa: BLE001 - whatever a training script hands over, report() must not raise
        try:
            return str(value)
        except Exception:  # noqa: BLE001
            return None
    return number if math.isfinite(number) else None


def report(*, step: float | None = None, total: float | None = None, **metrics: Any) -> None:
    """Record progress (`step` of `total`) and any scalar metrics. Never raises into the training loop."""
    path = os.environ.get(METRICS_ENV)
    if not path:
        return
    record = {"t": time.time(), "step": _clean(step), "total": _clean(total)}
    record["metrics"] = {str(k): _clean(v) for k, v in metrics.items()}
    line = json.dumps(record, separators=(",", ":")) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError:
        pass
