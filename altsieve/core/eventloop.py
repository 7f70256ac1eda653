"""A new asyncio event loop on uvloop where it is installed: the fetcher's and the simulated web's."""

from __future__ import annotations

import asyncio

try:  # uvloop has no Windows build; asyncio's own loop stands in there
    import uvloop
except ImportError:  # pragma: no cover - only where uvloop is not installed
    uvloop = None


def new_event_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind`` ("uvloop" or "asyncio"); asyncio's where uvloop is not installed."""
    if kind == "uvloop" and uvloop is not None:
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
