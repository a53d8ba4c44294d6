"""The two backends every store contract suite runs over: memory, and Redis.

A suite's fixture is parametrized with ``BACKENDS`` and yields ``handles(...)``: a function
that opens another handle on the same store, as a second worker, a restarted flow or a
command reading after the flow would. On memory that is the same shared object (what one
process's workers share); on Redis a new client on the same keys, closed at the end of the
test. The Redis param is an integration test: it needs the ``redis-server`` the session
starts (``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol, TypeVar

import pytest

from base.config import Config


class Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=Closable)

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.integration)]


def handles(
    request: pytest.FixtureRequest,
    memory: Callable[..., S],
    on_redis: Callable[..., S],
    same_store: Callable[..., Hashable] = lambda *args, **kwargs: (args, tuple(kwargs.items())),
) -> Iterator[Callable[..., S]]:
    """Yield the opener of ``request.param``'s backend; ``memory(*args)`` makes a memory
    store, ``on_redis(config, *args)`` opens a Redis one, and calls whose ``same_store(*args)``
    are equal share one memory store."""
    opened: list[S] = []
    if request.param == "memory":
        shared: dict[Hashable, S] = {}

        def open_store(*args: Any, **kwargs: Any) -> S:
            key = same_store(*args, **kwargs)
            if key not in shared:
                shared[key] = memory(*args, **kwargs)
            return shared[key]

    else:
        config: Config = request.getfixturevalue("omni_config")

        def open_store(*args: Any, **kwargs: Any) -> S:
            store = on_redis(config, *args, **kwargs)
            opened.append(store)
            return store

    yield open_store
    for store in opened:
        store.close()
