"""Durations for people: the short form of tables (`age`) and the exact form of `describe` (`duration`).
Pure, imports nothing heavy: read commands use it on their fast path (cli/render.py, screen.py)."""

from __future__ import annotations


def age(seconds: float | None) -> str:
    """A duration as 42s, 5m, 3h, 2d."""
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def duration(seconds: float | None) -> str:
    """Seconds with units, to the second, at most two units: 45s, 5m30s, 2h, 1d3h; `-` when unset."""
    if seconds is None:
        return "-"
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:g}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts[:2])
