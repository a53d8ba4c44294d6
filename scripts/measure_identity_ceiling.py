"""How many identity events and key writes a second one Redis primary takes from
identity_stitch's compare-and-set (``state.identity_store``), which needs one primary.

Run from the project root: ``.venv/bin/python scripts/measure_identity_ceiling.py``
(``--url redis://…`` to measure a Redis of your own instead of a redis-server started here
on a free port with persistence off; its database is flushed first, so give it an empty one).

Traffic: ``--shoppers`` people, each with an anonymous id, a phone, an email and, for some, a
user id; an event carries two or three of one person's identifiers (mostly of people seen
before: links, few merges), cut into batches of ``--batch`` events as a source partition
hands them over. Writers are ``--writers`` threads, each its own store and connection, on
disjoint shoppers (no conflicts: the ceiling, not the retry rate).

Two figures per batch size:

- seen by the writers: events/s end to end (client, network and server);
- the primary's ceiling: the CPU time of Redis's main thread (``INFO cpu``,
  ``used_cpu_*_main_thread``: commands, the scripts, reading and answering the sockets)
  per event and per key written. Redis runs commands on that one thread, so 1 s divided
  by that time is what the primary could take with the writers' side to spare: the
  number to size against. ``script µs/ev`` is the compare-and-set script's share of it
  (``INFO commandstats``; the rest is the reads and the sockets). Key writes are the
  SET, HSET, DEL, EXPIRE and INCRBY calls the script makes (each SET with EX is one).

This is a measurement to read, not a test: nothing here fails.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

WRITE_COMMANDS = ("set", "hset", "del", "expire", "incrby")


def shopper_events(
    first: int, count: int, events: int, seed: int
) -> list[tuple[str, int, tuple[str, ...]]]:
    """(event id, ms, identifiers) of ``events`` events by shoppers first..first+count-1."""
    rng = random.Random(seed)
    out = []
    for n in range(events):
        who = first + min(int(rng.expovariate(1 / max(1, count / 4))), count - 1)
        mine = [f"anon:a{who}", f"phone:{who:011d}", f"email:s{who}@example.com"]
        if who % 3 == 0:
            mine.append(f"user:u{who}")
        picked = tuple(rng.sample(mine, rng.choice((2, 2, 3))))
        out.append((f"ev-{seed}-{n}", 1_700_000_000_000 + n, picked))
    return out


def commandstats(client: Any) -> dict[str, tuple[int, int]]:
    """command → (calls, µs) from ``INFO commandstats``."""
    info = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }


def main_thread_cpu_s(client: Any) -> float:
    """CPU seconds of redis-server's main thread so far (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def measure(url: str, batch: int, events: int, writers: int, shoppers: int) -> dict[str, float]:
    import redis

    from domain.identity import EventIdentifiers, IdentityPolicy
    from state.identity_store import IdentityStore

    admin = redis.Redis.from_url(url)
    admin.flushdb()
    admin.config_resetstat()
    cpu_before = main_thread_cpu_s(admin)
    per_writer = events // writers
    streams = []
    for w in range(writers):
        raw = shopper_events(w * shoppers, shoppers, per_writer, seed=w)
        streams.append([EventIdentifiers(*e) for e in raw])
    stores = [
        IdentityStore(redis.Redis.from_url(url), "omni:", IdentityPolicy(), 86_400 * 400)
        for _ in range(writers)
    ]

    def run(store: IdentityStore, stream: list[EventIdentifiers]) -> None:
        for start in range(0, len(stream), batch):
            store.resolve_batch(stream[start : start + batch])

    threads = [
        threading.Thread(target=run, args=(s, e)) for s, e in zip(stores, streams, strict=True)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    stats = commandstats(admin)
    cpu_s = main_thread_cpu_s(admin) - cpu_before
    for store in stores:
        store.close()
    admin.close()
    done = per_writer * writers
    script_us = stats.get("evalsha", (0, 0))[1] + stats.get("eval", (0, 0))[1]
    writes = sum(stats.get(c, (0, 0))[0] for c in WRITE_COMMANDS)
    return {
        "events": done,
        "seen_events_s": done / elapsed,
        "script_us_event": script_us / done,
        "cpu_us_event": cpu_s * 1e6 / done,
        "ceiling_events_s": done / cpu_s,
        "writes_event": writes / done,
        "ceiling_writes_s": writes / cpu_s,
        "scripts": stats.get("evalsha", (0, 0))[0] + stats.get("eval", (0, 0))[0],
    }


def start_server() -> tuple[subprocess.Popen[bytes], str, Path]:
    from omnistream.embedded import free_port, port_accepts, redis_server_binary

    workdir = Path(tempfile.mkdtemp(prefix="identity-ceiling-"))
    port = free_port()
    argv = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    deadline = time.monotonic() + 10
    while not port_accepts(port):
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("redis-server did not start within 10 s")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0", workdir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a Redis to measure (flushed!) instead of starting one")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--shoppers", type=int, default=5_000)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    process = None
    workdir = None
    url = args.url
    if url is None:
        process, url, workdir = start_server()
    try:
        print(f"{args.events} events, {args.writers} writers, {args.shoppers} shoppers each")
        print(
            f"{'batch':>6} {'seen ev/s':>10} {'script µs/ev':>13} {'cpu µs/ev':>10} "
            f"{'ceiling ev/s':>13} {'writes/ev':>10} {'ceiling writes/s':>17} {'scripts':>8}"
        )
        for batch in args.batch:
            events = min(args.events, 2_000 * batch)  # batch 1 is slow on the client side
            r = measure(url, batch, events, args.writers, args.shoppers)
            print(
                f"{batch:>6} {r['seen_events_s']:>10.0f} {r['script_us_event']:>13.1f} "
                f"{r['cpu_us_event']:>10.1f} "
                f"{r['ceiling_events_s']:>13.0f} {r['writes_event']:>10.2f} "
                f"{r['ceiling_writes_s']:>17.0f} {r['scripts']:>8.0f}"
            )
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
