"""``omnistream demo --keep`` and ``--prometheus``: the kept stack answers the commands of
another shell through the ``export`` lines the demo prints, the demo's Prometheus scrapes
every flow and the service with the project's alert rules loaded, and SIGTERM stops it all
(exit 0, every port closed, no process left).

References of their own: Redis read directly (stock hashes, the identity key of a phone
hashed here as CONTRACT §4 says), each flow's /metrics read directly, and the rule groups
read from ``monitoring/rules``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml

from base.config import load_config
from connectors.generator import TrafficModel
from connectors.reference_files import load_reference
from omnistream.embedded import free_port
from omnistream.processes import scrape, total
from tests.integration.test_demo import assert_gone, descendants

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EVENTS, SEED, BAD_RATIO = 3_000, 7, 0.01


@dataclass
class KeptDemo:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def env(self) -> dict[str, str]:
        """This environment without OMNI_*, plus the demo's exports: another shell."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
        return clean | self.exports

    def ports(self) -> dict[str, int]:
        """Every port the kept demo listens on, by what listens there."""
        first = int(self.exports["OMNI_METRICS_PORT"])
        found = {
            "broker": int(self.exports["OMNI_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1]),
            "redis": int(urllib.parse.urlsplit(self.exports["OMNI_REDIS_URL"]).port or 0),
            **{f"metrics+{n}": first + n for n in range(4)},
        }
        service = re.search(r"HTTP service: http://127\.0\.0\.1:(\d+)/docs", self.output)
        assert service is not None, self.output[-3000:]
        found["serve"] = int(service[1])
        prometheus = re.search(r"Prometheus: http://127\.0\.0\.1:(\d+) ", self.output)
        if prometheus:
            found["prometheus"] = int(prometheus[1])
        return found


def omnistream(demo: KeptDemo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnistream.cli", *args],
        env=demo.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextmanager
def kept_demo(tmp_path: Path, *flags: str) -> Iterator[KeptDemo]:
    """``demo --keep`` run until it printed its export lines; stopped with SIGTERM after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    args = ["--events", str(EVENTS), "--rate", "1000", "--seed", str(SEED)]
    args += ["--bad-ratio", str(BAD_RATIO), "--keep", *flags]
    with (tmp_path / "demo.err").open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "omnistream.cli", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        demo = KeptDemo(process)
        kept = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                demo.lines.append(line.rstrip("\n"))
                if line.startswith("# then:"):
                    kept.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 300
            while not kept.wait(0.5):
                assert process.poll() is None, (tmp_path / "demo.err").read_text()[-3000:]
                assert time.monotonic() < deadline, "the demo printed no export lines in 300 s"
            for line in demo.lines:
                if line.startswith("export "):
                    ((name, value),) = [shlex.split(line[len("export ") :])[0].split("=", 1)]
                    demo.exports[name] = value
            yield demo
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
            reader.join(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def stop_and_check_everything_stopped(demo: KeptDemo, tmp_path: Path) -> None:
    children = descendants(demo.process.pid)
    ports = demo.ports()
    assert all(not refused(port) for port in ports.values()), ports
    demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(timeout=60) == 0, (tmp_path / "demo.err").read_text()[-3000:]
    assert len(children) >= 7  # broker, redis, four flows, the service (and Prometheus)
    assert_gone(children)
    assert {name for name, port in ports.items() if not refused(port)} == set()


def test_the_kept_demo_answers_another_shells_commands(tmp_path: Path) -> None:
    with kept_demo(tmp_path) as demo:
        assert set(demo.exports) >= {
            "OMNI_KAFKA_BOOTSTRAP",
            "OMNI_REDIS_URL",
            "OMNI_TOPIC_PREFIX",
            "OMNI_PII_KEY",
            "OMNI_METRICS_PORT",
        }, demo.output[-2000:]
        config = load_config(env=demo.env())
        prefix = config.redis.key_prefix
        client = redis.Redis.from_url(demo.exports["OMNI_REDIS_URL"], decode_responses=True)
        try:
            # stock: every location Redis holds for the sku, with its on_hand.
            sku = re.search(r"# then: omnistream stock (\S+)", demo.output)
            assert sku is not None
            stored = {
                key.rsplit(":", 1)[1]: client.hgetall(key)
                for key in client.scan_iter(f"{prefix}stock:{sku[1]}:*")
            }
            assert stored, f"the demo stored no stock of {sku[1]}"
            stock = omnistream(demo, "stock", sku[1])
            assert stock.returncode == 0, stock.stderr
            shown = {
                line.split()[0]: line.split()[3]
                for line in stock.stdout.splitlines()
                if line.split() and line.split()[0] in stored
            }
            assert shown == {location: row["on_hand"] for location, row in stored.items()}

            # whois: a phone of the demo's stream, raw, hashed with the exported key.
            key = demo.exports["OMNI_PII_KEY"].encode()
            for raw, owner in phones_of_the_stream(config, client, key):
                whois = omnistream(demo, "whois", "phone", raw)
                assert whois.returncode == 0, whois.stdout + whois.stderr
                assert whois.stdout.startswith(f"customer {owner} "), whois.stdout
                break
            else:
                pytest.fail("no phone of the demo's stream is known to Redis under the key")
        finally:
            client.close()

        # top: the four flows up, each with the events its own /metrics counted.
        top = omnistream(demo, "top", "--once", "--interval", "0.5")
        assert top.returncode == 0, top.stderr
        assert "flows up 4/4" in top.stdout, top.stdout
        first = int(demo.exports["OMNI_METRICS_PORT"])
        for n, flow in enumerate(("stock_pool", "identity_stitch", "rule_triggers", "attribution")):
            (line,) = [ln for ln in top.stdout.splitlines() if ln.startswith(f"│ {flow} ")]
            cells = [cell.strip() for cell in line.split("│")[1:-1]]
            consumed = total(scrape(first + n), "omnistream_events_consumed_total", flow=flow)
            assert cells[1:3] == ["up", f"{int(consumed):,}"], top.stdout
        print(top.stdout)

        # serve: a second service in the other shell reads the same Redis.
        port = free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "omnistream.cli", "serve", "--port", str(port)],
            env=demo.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            answer = get_json(f"http://127.0.0.1:{port}/v1/stock/{sku[1]}", deadline_s=60)
            assert {p["location_id"]: str(p["on_hand"]) for p in answer["positions"]} == {
                location: row["on_hand"] for location, row in stored.items()
            }
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=30)

        stop_and_check_everything_stopped(demo, tmp_path)


def phones_of_the_stream(config: Any, client: redis.Redis, key: bytes) -> Iterator[tuple[str, str]]:
    """Raw phones of the demo's good events (the same seeded stream) whose keyed hash, as
    CONTRACT §4 defines it, Redis maps to a customer, with that customer."""
    model = TrafficModel(load_reference(config), seed=SEED, bad_ratio=BAD_RATIO)
    for event in model.events(EVENTS):
        if event.bad_reason is not None or b'"phone"' not in event.value:
            continue
        raw = str(orjson.loads(event.value)["phone"])
        digits = re.sub(r"\D", "", raw)
        if raw.strip().startswith("+"):
            normalised = digits
        elif raw.strip().startswith("00"):
            normalised = digits[2:]
        elif len(digits) == 11:
            normalised = config.pii.default_country_code + digits
        else:
            continue
        hashed = hmac.new(key, normalised.encode(), hashlib.sha256).hexdigest()
        owner = client.get(f"{config.redis.key_prefix}id:phone:{hashed}")
        if owner:
            yield raw, str(owner)


def get_json(url: str, deadline_s: float) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_the_demos_prometheus_scrapes_every_flow_with_the_alert_rules(tmp_path: Path) -> None:
    with kept_demo(tmp_path, "--prometheus") as demo:
        ports = demo.ports()
        prometheus = f"http://127.0.0.1:{ports['prometheus']}"

        # Every flow and the service is a target, and all are up.
        wanted = {f"http://127.0.0.1:{ports[f'metrics+{n}']}/metrics" for n in range(4)}
        wanted.add(f"http://127.0.0.1:{ports['serve']}/metrics")
        deadline = time.monotonic() + 60
        while True:
            targets = get_json(f"{prometheus}/api/v1/targets", 30)["data"]["activeTargets"]
            health = {t["scrapeUrl"]: t["health"] for t in targets}
            if set(health.values()) == {"up"} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert health == dict.fromkeys(wanted, "up")
        assert {t["labels"]["job"] for t in targets} == {"omnistream", "omnistream-serve"}

        # The project's rule groups, every rule of them.
        expected = {
            group["name"]: len(group["rules"])
            for path in sorted((ROOT / "monitoring" / "rules").glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"]
        }
        groups = get_json(f"{prometheus}/api/v1/rules", 30)["data"]["groups"]
        assert {g["name"]: len(g["rules"]) for g in groups} == expected
        assert all(rule["health"] in ("ok", "unknown") for g in groups for rule in g["rules"])

        # What Prometheus scraped is what the flows count: the demo is idle now.
        consumed = sum(
            total(scrape(ports[f"metrics+{n}"]), "omnistream_events_consumed_total")
            for n in range(4)
        )
        assert consumed > EVENTS
        query = urllib.parse.urlencode(
            {"query": 'sum(omnistream_events_consumed_total{job="omnistream"})'}
        )
        deadline = time.monotonic() + 60
        while True:
            result = get_json(f"{prometheus}/api/v1/query?{query}", 30)["data"]["result"]
            value = float(result[0]["value"][1]) if result else None
            if value == consumed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert value == consumed

        stop_and_check_everything_stopped(demo, tmp_path)
