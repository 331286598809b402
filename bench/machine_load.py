"""How busy the shared machine is: the benchmarks record it with every timing and wait for quiet."""

from __future__ import annotations

import os
import time

import psutil


def system_load() -> dict[str, float]:
    """A 1 s CPU sample and the load averages (other jobs skew every timing)."""
    busy = psutil.cpu_percent(interval=1.0)
    one, five, fifteen = os.getloadavg()
    return {
        "cpu_busy_pct": busy,
        "loadavg_1m": round(one, 2),
        "loadavg_5m": round(five, 2),
        "loadavg_15m": round(fifteen, 2),
    }


def wait_for_quiet(max_wait: float, threshold_pct: float) -> dict[str, float]:
    """Wait (up to ``max_wait`` seconds) until the CPUs are nearly idle; return the last load sample."""
    deadline = time.monotonic() + max_wait
    load = system_load()
    while load["cpu_busy_pct"] > threshold_pct and time.monotonic() < deadline:
        load = system_load()
    return load
