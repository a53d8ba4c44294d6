"""Decoding and event-time parsing, old against new, in µs per event on generated traffic.

Run from the project root: ``.venv/bin/python scripts/measure_decode.py [--events N]``.
"Old" is the decoder and parser as they were before msgspec and ciso8601, kept in
``tests/legacy_decode.py`` and ``tests/legacy_timeparse.py`` as the differential tests'
reference. Each figure is the best of ``--repeats`` passes over the same messages (the
least disturbed by other work on the machine); the garbage collector is off while timing,
as the flows run it rarely. This is a measurement to read, not a test: nothing here fails.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def best_us(run: Callable[[], object], count: int, repeats: int) -> float:
    """µs per item of the fastest of ``repeats`` runs of ``run`` over ``count`` items."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        finally:
            gc.enable()
    return best / count * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bad-ratio", type=float, default=0.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import msgspec
    import orjson

    from base.config import load_config
    from connectors import decode as new_decode
    from connectors.generator import TrafficModel
    from connectors.input_structs import LOOSE_DECODERS
    from connectors.reference_files import load_reference
    from domain import timeparse as new_time
    from domain.events import Origin
    from flows.stock_pool import DECODED_TYPES
    from tests import legacy_decode as old_decode
    from tests import legacy_timeparse as old_time

    reference = load_reference(load_config(env={}))
    events = list(TrafficModel(reference, seed=7, bad_ratio=args.bad_ratio).events(args.events))
    messages = [(e.topic, e.value, Origin(e.topic, 0, i, e.key)) for i, e in enumerate(events)]
    count = len(messages)

    def hasher(kind: str, value: str) -> str:
        return value

    def decoding(module: Any, pii: Any, only: frozenset[str] | None) -> Callable[[], object]:
        decode = module.decode_message
        return lambda: [decode(t, v, o, reference, pii, only) for t, v, o in messages]

    def structs_only() -> object:
        """msgspec's share: the loose structs, which take the extra fields too."""
        decoded = []
        for topic, value, _ in messages:
            try:
                decoded.append(LOOSE_DECODERS[topic].decode(value))
            except msgspec.DecodeError:
                decoded.append(None)
        return decoded

    def orjson_only() -> object:
        return [orjson.loads(v) for _, v, _ in messages]

    head = f"{count:,} generated events (seed 7, bad_ratio {args.bad_ratio})"
    print(f"{head}, best of {args.repeats}")
    rows = [
        ("decode, identity_stitch (all types, PII hashed)", hasher, None),
        ("decode, stock_pool (orders, sales, movements only)", None, DECODED_TYPES),
    ]
    for label, pii, only in rows:
        old = best_us(decoding(old_decode, pii, only), count, args.repeats)
        new = best_us(decoding(new_decode, pii, only), count, args.repeats)
        print(f"  {label:52} old {old:6.2f}  new {new:6.2f} µs/event  ×{old / new:4.1f}")
    baselines = (("msgspec structs alone", structs_only), ("orjson.loads alone", orjson_only))
    for label, run in baselines:
        print(f"  {label:52}     {best_us(run, count, args.repeats):6.2f} µs/event")

    texts = [t for t in (orjson.loads(v).get("ts") for _, v, _ in messages) if isinstance(t, str)]
    old_parse, new_parse = old_time.parse_event_time, new_time.parse_event_time
    for label, values in (("stream order", texts), ("each time once", sorted(set(texts)))):

        def parse_old(values: list[str] = values) -> object:
            return [old_parse(v) for v in values]

        def parse_new(values: list[str] = values) -> object:
            return [new_parse(v) for v in values]

        old = best_us(parse_old, len(values), args.repeats)
        new = best_us(parse_new, len(values), args.repeats)
        print(
            f"  {'event time, ' + label + f' ({len(values):,} strings)':52} "
            f"old {old:6.2f}  new {new:6.2f} µs/time   ×{old / new:4.1f}"
        )


if __name__ == "__main__":
    main()
