"""``omnistream demo`` finishes, or stops on Ctrl-C, and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def descendants(root: int) -> set[int]:
    """Pids of every live descendant of ``root`` (from /proc), zombies excluded."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def start_demo(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    return subprocess.Popen(
        [sys.executable, "-m", "omnistream.cli", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def watch_children(process: subprocess.Popen[str], want: int, timeout_s: float) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        seen |= descendants(process.pid)
        if len(seen) >= want:
            break
        time.sleep(0.1)
    return seen


def assert_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)]


def test_demo_runs_to_a_summary_and_cleans_up() -> None:
    # The default 20,000 events, at a rate the flows keep up with: live attribution credits a
    # purchase with the touches read before it, and a flood read out of order would credit
    # fewer (see the README).
    demo = start_demo("--rate", "1000", "--bad-ratio", "0.02")
    children = watch_children(demo, want=6, timeout_s=60)  # broker, redis, four flows
    output, _ = demo.communicate(timeout=300)
    assert demo.returncode == 0, output[-3000:]
    assert "== Omnistream demo summary ==" in output
    # Every event produced (the stream and the shoppers' answers to their triggers) is read.
    produced = re.search(r"events produced: ([\d,]+)", output)
    assert produced is not None and int(produced[1].replace(",", "")) > 20_000
    assert f"events consumed by stock_pool: {produced[1]} " in output
    assert "events consumed by identity_stitch:" in output and "customers:" in output
    assert "dead letters:" in output and "metrics of stock_pool: http://127.0.0.1:" in output
    assert "events consumed by rule_triggers:" in output and "triggers fired:" in output
    assert "held back:" in output and "docker compose up" in output
    # The customers of CONTRACT §11: the base, the segments, the rules, one profile.
    assert "profiles by segment: new=" in output and "customer rules: lapsed coupons=" in output
    profile = output.split("sample profile omni:profile:", 1)[1].split("metrics of", 1)[0]
    for name in ("first_seen", "purchases", "segment", "top_categories", "consent_marketing"):
        assert f"  {name} " in profile, profile
    assert "== Experiments (omnistream experiments report) ==" in output
    experiments = output.split("== Experiments (omnistream experiments report) ==")[1]
    assert "assigned" in experiments.split("== Attribution")[0]
    assert "Wald test of two proportions" in experiments
    # The shoppers answered with the default true uplift: +25 % for the cart rule's
    # amount_15 coupon, found with ~4.5 standard errors to spare (the verdict of the
    # zero-uplift free_shipping arm is a 95 % statement, left to the seeded unit test).
    assert "true uplift: amount_15 +25%, free_shipping +0%" in experiments
    cart = experiments.split("\ncart-abandonment\n", 1)[1].split("\n\n", 1)[0]
    (amount_15,) = [line for line in cart.splitlines() if line.startswith("  amount_15 ")]
    assert amount_15.endswith("  significant"), cart
    assert "== Attribution" in output and "markov" in output
    # Most purchases follow a touch: direct is a minority of the revenue.
    direct = re.search(r"\n  direct +[\d,.]+ +([\d.]+)%", output.split("== Attribution", 1)[1])
    assert direct is not None and float(direct[1]) < 50, output.split("== Attribution", 1)[1]
    assert len(children) >= 4
    assert_gone(children)


def test_ctrl_c_stops_everything_cleanly() -> None:
    demo = start_demo("--events", "200000", "--rate", "500")
    children = watch_children(demo, want=4, timeout_s=60)
    time.sleep(3)  # traffic is flowing
    demo.send_signal(signal.SIGINT)
    output, _ = demo.communicate(timeout=60)
    assert demo.returncode in (0, 130), output[-3000:]
    assert len(children) >= 4
    assert_gone(children)
