"""``rules backtest --topic --stock end`` against the real thing: generated traffic produced to
the embedded broker, stock_pool and identity_stitch run to the end of it (Redis then holds
the pool of the end of the input), then ``run rule_triggers --until-idle`` as a process, and
the backtest over the topics it read. Trigger by trigger: the same ids, the same payloads
but ``fired_at``. (The same recording and rules in-process, on 1 and 2 workers:
``tests/unit/test_backtest_equals_replay.py``.)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from base import topics
from base.config import Config, dump_config
from base.units import DAY_MS
from connectors.generator import DEFAULT_START_MS, TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.cli import main
from omnistream.processes import start_flow
from tests.crash_helpers import run_flow
from tests.kafka_helpers import read_topic
from tests.unit.test_backtest_equals_replay import EVENTS_PER_DAY, OUTPUTS, RULES

pytestmark = pytest.mark.integration


def published(config: Config) -> dict[str, dict[str, Any]]:
    """id → topic and payload without ``fired_at``, of what rule_triggers published."""
    found: dict[str, dict[str, Any]] = {}
    for name in OUTPUTS:
        for message in read_topic(config, name, timeout_s=60):
            event = orjson.loads(message.value() or b"{}")
            if event["source"] != "omnistream/rule_triggers":
                continue  # stock_pool's transfers for pickup exceptions share the topic
            data = event["data"]
            data.pop("fired_at")
            assert found.setdefault(event["id"], {"topic": name, **data}) == {"topic": name, **data}
    return found


def test_the_backtest_over_the_topics_publishes_what_the_replay_published(
    omni_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = omni_config.with_overrides(rules={"file": str(rules)})
    reference = load_reference(config)
    second_day = DEFAULT_START_MS + 61 * DAY_MS
    for seed, start_ms in ((23, DEFAULT_START_MS), (24, second_day)):
        model = TrafficModel(reference, seed=seed, customers=1500, start_ms=start_ms)
        produce(config, model.events(EVENTS_PER_DAY), progress=False)
    path = tmp_path / "pipeline.yaml"
    dump_config(config, path)
    upstream = [
        start_flow(name, path, until_idle=True) for name in ("stock_pool", "identity_stitch")
    ]
    assert [p.wait(timeout=600) for p in upstream] == [0, 0]
    assert run_flow("rule_triggers", config, tmp_path / "rule_triggers.yaml").code == 0
    flow = published(config)

    out = tmp_path / "triggers.jsonl"
    command = ["rules", "backtest", str(rules), "--topic", "--stock", "end"]
    assert main([*command, "--triggers", str(out), "--config", str(path)]) == 0
    assert "stock looked up: end" in capsys.readouterr().out
    backtest: dict[str, dict[str, Any]] = {}
    for line in out.read_bytes().splitlines():
        trigger = orjson.loads(line)
        trigger.pop("fired_at")
        backtest[trigger.pop("id")] = trigger

    only_flow = Counter(flow[i]["rule_id"] for i in set(flow) - set(backtest))
    only_backtest = Counter(backtest[i]["rule_id"] for i in set(backtest) - set(flow))
    extra = [flow[i] for i in set(flow) - set(backtest)] + [
        backtest[i] for i in set(backtest) - set(flow)
    ]
    assert not only_flow and not only_backtest, (
        f"replay: {only_flow}; backtest: {only_backtest}; {extra[:3]}"
    )
    differing = [i for i in flow if flow[i] != backtest[i]]
    assert not differing, [(flow[i], backtest[i]) for i in differing[:3]]
    kinds = Counter((t["topic"], t["rule_id"]) for t in flow.values())
    print(f"\n{len(flow)} triggers: {sorted(kinds.items())}")
    assert len({rule for _, rule in kinds}) == 8  # every rule of the file fired
    assert topics.TRIGGERS_HOLDOUT in {topic for topic, _ in kinds}
