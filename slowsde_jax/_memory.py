"""How much memory is free, on the host and on the device (a leaf module)."""
from __future__ import annotations

import os

import jax

__all__ = ["available_memory"]


def available_memory() -> dict:
    """Bytes free now: ``host`` (MemAvailable, or the physical memory) and ``device`` (the accelerator's
    free memory when jax reports it; on the CPU backend, the host's)."""
    host = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = float(line.split()[1]) * 1024
    except OSError:
        pass
    if host is None:
        try:
            host = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            host = float("inf")
    device = host
    try:
        stats = jax.devices()[0].memory_stats()
        if stats and "bytes_limit" in stats:
            device = float(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001 - a backend without memory stats: use the host's figure
        pass
    return {"host": host, "device": device}
