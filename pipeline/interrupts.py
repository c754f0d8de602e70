"""Ctrl-C and SIGTERM as a KeyboardInterrupt that cannot be lost.

Both stop a command the same way (runs ended KILLED, trials marked, exit 130), whatever the
process inherited: a search started in the background by a script or a CI runner starts with
SIGINT ignored, which Python keeps. And Python drops an exception raised inside a garbage
collector callback or a finalizer (JAX registers such a callback), so a KeyboardInterrupt that
lands there is printed and forgotten. The handler therefore also records the signal, and the
study calls `check()` where it starts something new (a trial, an epoch, a wait for workers), so
a swallowed interrupt is raised again at the next of them.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt inside the block (previous handlers back
    after it: tests run commands in-process)."""
    _received.clear()
    try:
        previous = {s: signal.signal(s, _interrupt) for s in SIGNALS}
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()  # handled by now: the command ended


def check() -> None:
    """Raise KeyboardInterrupt if a signal arrived whose own raise may have been swallowed."""
    if _received:
        raise KeyboardInterrupt
