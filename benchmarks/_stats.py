"""One way to summarise timings, shared by every benchmark.

Benchmarks run as ``python benchmarks/X.py``, which puts this folder on the import path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Median, 95th and 99th percentile, maximum and count of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(array)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "max": float(array.max()),
            "n": int(array.size)}


def summary(values: Sequence[float], unit: str = "ms", digits: int = 2,
            label: str | None = None, width: int = 0) -> str:
    """``label  median … p95 … p99 … max … (n=…)`` on one line."""
    stats = percentiles(values)
    number = f"{{:{digits + 4}.{digits}f}} {unit}"
    text = "   ".join(f"{key} {number.format(stats[key])}"
                      for key in ("median", "p95", "p99", "max")) + f"   (n={stats['n']})"
    return text if label is None else f"{label:<{width}s} {text}"
