"""A stop request (SIGTERM, Ctrl-C) that code waiting inside a flow can see.

Why a flag: the signal reaches Bytewax's main thread, which tells the workers to stop once
their current step returns. A step that is itself waiting (a Redis write retrying through an
outage) would hold the stop up for as long as it waits, so such waits sleep on this flag
instead of ``time.sleep`` and give up as soon as a stop is requested. Standard library only:
the state layer uses it.
"""

from __future__ import annotations

import threading

_STOP = threading.Event()


class StopRequested(BaseException):
    """A wait ended by a stop request. A ``BaseException`` like ``KeyboardInterrupt``, so an
    ``except Exception`` inside a step does not swallow it; the runner reports the flow as
    stopped on request. What the step had not written yet is read again from the last
    recovery snapshot (or from the beginning without recovery) at the next start."""


def request_stop() -> None:
    """Ask every wait of this process to end (set by the runner's signal handling)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def wait(seconds: float) -> bool:
    """Sleep up to ``seconds``; returns True, at once, when a stop has been requested."""
    return _STOP.wait(seconds)


def clear() -> None:
    """Forget a stop request (tests running several stops in one process)."""
    _STOP.clear()
