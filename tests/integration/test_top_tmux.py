"""``omnistream top`` in a real terminal: tmux runs it beside a real stock_pool on the
session's broker and Redis, and the test reads the screen as an operator would.

What the screen must show is checked against references of its own: the events the test
produced (every one is read by stock_pool), the dead letters on the ``deadletter`` topic
with ``flow: stock_pool``, and the flow's own /metrics read right after the screen. Each
successive pair of frames is checked too: the rate is above zero exactly when the events
count went up between them. Then the flow is stopped and its row must turn ``down``, and
Ctrl-C must end ``top`` with exit status 0.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from base.config import Config, dump_config
from connectors.generator import TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.embedded import free_port
from omnistream.processes import scrape, start_flow, stop_process, total, wait_for_metrics
from tests.kafka_helpers import read_json

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
#: The columns of top's table, in order.
COLUMNS = (
    "flow",
    "status",
    "events",
    "events/s",
    "lag",
    "max lag partition",
    "dead letters",
    "triggers fired",
    "held back",
    "stockouts",
    "low stock",
)


class Terminal:
    """A tmux server of its own (its socket in a directory of its own, removed after), one
    160×50 window running a clean shell."""

    def __init__(self, env: dict[str, str]) -> None:
        tmux = shutil.which("tmux")
        assert tmux is not None, "tmux is needed (Debian: apt-get install tmux)"
        self.socket_dir = Path(tempfile.mkdtemp(prefix="omnitop-"))
        self.command = [tmux, "-S", str(self.socket_dir / "tmux")]
        self.env = env
        self.tmux("new-session", "-d", "-x", "160", "-y", "50", "bash --norc --noprofile")

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self.command, *args], env=self.env, capture_output=True, text=True, check=True
        )
        return done.stdout

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-l", line)
        self.tmux("send-keys", "Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float, what: str) -> str:
        deadline = time.monotonic() + timeout_s
        screen = self.screen()
        while not predicate(screen):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not on the screen within {timeout_s:.0f} s:\n{screen}")
            time.sleep(0.1)
            screen = self.screen()
        return screen

    def close(self) -> None:
        subprocess.run([*self.command, "kill-server"], env=self.env, check=False)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


@dataclass(frozen=True)
class Seen:
    """What one frame of the screen says about a flow."""

    frame: int
    cells: dict[str, str]
    screen: str

    def number(self, column: str) -> float:
        return float(self.cells[column].replace(",", ""))


def frame_of(screen: str) -> int | None:
    found = re.search(r"omnistream top +frame (\d+) ", screen)
    return int(found[1]) if found else None


def row_of(screen: str, flow: str) -> dict[str, str] | None:
    """The table row of ``flow`` as column → text (the table draws one line per flow)."""
    for line in screen.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == len(COLUMNS) and cells[0] == flow:
            return dict(zip(COLUMNS, cells, strict=True))
    return None


def frames(terminal: Terminal, flow: str, until: float) -> Iterator[Seen]:
    """Every new frame seen on the screen (polled ten times a second) until ``until``."""
    last = None
    while time.monotonic() < until:
        screen = terminal.screen()
        number, row = frame_of(screen), row_of(screen, flow)
        if number is not None and row is not None and number != last:
            last = number
            yield Seen(number, row, screen)
        time.sleep(0.1)


def test_top_shows_a_flow_in_a_terminal_and_then_down(omni_config: Config, tmp_path: Path) -> None:
    port = free_port()
    config = omni_config.with_overrides(metrics={"port": port})
    config_path = tmp_path / "stock_pool.yaml"
    dump_config(config, config_path)
    events = list(TrafficModel(load_reference(config), seed=23, bad_ratio=0.05).events(2_500))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    env |= {"TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    for name in ("TMUX", "COLUMNS", "LINES"):
        env.pop(name, None)
    with (tmp_path / "flow.log").open("wb") as log:
        flow = start_flow("stock_pool", config_path, log=log)
        terminal = Terminal(env)
        try:
            wait_for_metrics(port, flow)
            top = [sys.executable, "-m", "omnistream.cli", "top", "--interval", "1"]
            top += ["--targets", f"http://127.0.0.1:{port}/metrics"]
            terminal.type(f"cd {shlex.quote(str(ROOT))} && " + shlex.join(top))
            terminal.wait_for(lambda s: row_of(s, "stock_pool") is not None, 60, "the flow's row")

            # Traffic at a steady rate for about ten seconds while the screen is read.
            produced: Counter[str] = Counter()
            producing = threading.Thread(
                target=lambda: produced.update(
                    produce(config, events, rate=250, progress=False).produced
                )
            )
            producing.start()
            seen: list[Seen] = []
            for frame in frames(terminal, "stock_pool", until=time.monotonic() + 120):
                own = total(scrape(port), "omnistream_events_consumed_total")
                assert frame.cells["status"] == "up", frame.screen
                # Top's scrape came before the screen, and the screen before the flow's own
                # counter was read: a counter only goes up.
                assert frame.number("events") <= own, frame.screen
                seen.append(frame)
                if not producing.is_alive() and frame.number("events") == len(events):
                    break
            producing.join()
            assert sum(produced.values()) == len(events)
            moving = [f for f in seen if f.cells["events/s"] not in ("…", "0.0")]
            assert moving, "no frame showed events/s above zero while traffic flowed"
            assert all(f.number("events/s") > 0 for f in moving)
            assert any(f.cells["lag"] != "–" for f in moving), moving[-1].screen
            for before, after in itertools.pairwise(seen):
                if after.frame == before.frame + 1:
                    went_up = after.number("events") > before.number("events")
                    assert (after.number("events/s") > 0) == went_up, after.screen

            # Drained: the screen shows every event produced and no lag; then the dead letters
            # stock_pool wrote on the deadletter topic, in total and by reason.
            terminal.wait_for(
                lambda s: (
                    (r := row_of(s, "stock_pool")) is not None
                    and (r["events"], r["events/s"], r["lag"]) == (f"{len(events):,}", "0.0", "0")
                ),
                60,
                "every event read, at 0.0 events/s and no lag",
            )
            counted = total(scrape(port), "omnistream_deadletters_total", flow="stock_pool")
            deadline = time.monotonic() + 30
            while True:
                dead = Counter(
                    letter["reason"]
                    for letter in read_json(config, "deadletter")
                    if letter.get("flow") == "stock_pool"
                )
                if dead.total() >= counted or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert dead.total() == counted > 0, (dead, counted)
            breakdown = ", ".join(f"{reason} {n:,}" for reason, n in sorted(dead.items()))

            def drained(screen: str) -> bool:
                row = row_of(screen, "stock_pool")
                return (
                    row is not None
                    and row["dead letters"] == f"{dead.total():,}"
                    and f"stock_pool dead letters: {breakdown}" in " ".join(screen.split())
                )

            screen = terminal.wait_for(drained, 60, "the drained flow's figures")
            assert total(scrape(port), "omnistream_events_consumed_total") == len(events)
            row = row_of(screen, "stock_pool")
            assert row is not None and row["stockouts"] != "–" and row["low stock"] != "–"
            print(f"\n{screen}")

            # The flow stops: its row turns down, with the reason, and top keeps running.
            assert stop_process(flow) == 0
            screen = terminal.wait_for(
                lambda s: (r := row_of(s, "stock_pool")) is not None and r["status"] == "down",
                30,
                "the stopped flow's row as down",
            )
            assert f"stock_pool down: http://127.0.0.1:{port}/metrics: connection refused" in (
                screen
            )
            assert "Traceback" not in screen
            print(screen)

            terminal.tmux("send-keys", "C-c")
            terminal.type("echo top-exited-with-$?")
            screen = terminal.wait_for(
                lambda s: "top-exited-with-" in s.replace("echo top-exited-with-$?", ""),
                30,
                "top's exit",
            )
            assert "top-exited-with-0" in screen, screen
            assert "Traceback" not in screen, screen
        finally:
            terminal.close()
            stop_process(flow)
