"""librdkafka's own log lines, through Python logging and without the flood.

Left alone, librdkafka writes to stderr itself, in its own format, and a client that cannot
reach its broker writes a ``FAIL`` line about 20 times a second, forever (one per reconnect;
a flow has a consumer per input partition). Every client of the project is given
``LIBRDKAFKA_LOG`` as its ``logger`` (``connectors.kafka_clients.client_settings``);
confluent-kafka then hands each line to its ``log`` method when the client is polled.

Each kind of line is logged at most once per ``REPEAT_S`` seconds, whichever client sent it,
and the next one after that says how many were left out. Lines about a broker connection
that librdkafka retries by itself (``FAIL``) are warnings, not errors: what such an outage
costs is reported by the code that waits on it (start-up checks, timeouts, retries).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

#: A kind of line is logged at most once per this many seconds.
REPEAT_S = 60.0

#: librdkafka facilities of connection failures it retries by itself.
TRANSIENT_FACILITIES = frozenset({"FAIL"})

#: What differs between repeats of one kind of line: durations, counts of suppressed
#: identical errors, "1/3 brokers are down".
_VARYING = re.compile(r"\d+ms\b|\d+ identical error\(s\) suppressed|\b\d+/\d+ brokers\b")

#: At most this many kinds are remembered; older ones are forgotten first.
_MAX_KINDS = 1000


class LibrdkafkaLog:
    """A confluent-kafka ``logger``: ``log(level, "%s [%s] %s", facility, client, text)``."""

    def __init__(
        self,
        logger: logging.Logger,
        repeat_s: float = REPEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.repeat_s = repeat_s
        self.clock = clock
        self._lock = threading.Lock()
        #: kind → (when last logged, repeats left out since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def log(self, level: int, msg: str, *args: object) -> None:
        facility, client, text = _parts(msg, args)
        if facility in TRANSIENT_FACILITIES and level > logging.WARNING:
            level = logging.WARNING
        if not self.logger.isEnabledFor(level):
            return
        kind = (facility, _VARYING.sub("#", text))
        now = self.clock()
        with self._lock:
            last = self._seen.get(kind)
            if last is not None and now - last[0] < self.repeat_s:
                self._seen[kind] = (last[0], last[1] + 1)
                return
            left_out = last[1] if last is not None else 0
            self._seen.pop(kind, None)
            self._seen[kind] = (now, 0)
            if len(self._seen) > _MAX_KINDS:
                del self._seen[next(iter(self._seen))]
        if left_out:
            self.logger.log(
                level,
                "%s %s: %s (%d more like it in the last %.0f s)",
                client,
                facility,
                text,
                left_out,
                now - last[0] if last is not None else 0.0,
            )
        else:
            self.logger.log(level, "%s %s: %s", client, facility, text)


def _parts(msg: str, args: tuple[object, ...]) -> tuple[str, str, str]:
    """(facility, client name, text) of a line as confluent-kafka passes it."""
    if len(args) == 3:
        return str(args[0]), str(args[1]), str(args[2])
    return "", "", msg % args if args else msg


#: The one instance every client shares, so that the same line from a dozen consumers of a
#: flow counts as one kind.
LIBRDKAFKA_LOG = LibrdkafkaLog(logging.getLogger("librdkafka"))
