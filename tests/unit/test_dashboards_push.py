"""`omnistream grafana push` against a real HTTP server on loopback that records what it is
sent, against a closed port, and without the grafana extra: the boards as checked in under
grafana/dashboards, a Bearer token, overwrite and folder; every failure one line and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from omnistream.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
BOARDS_DIR = ROOT / "grafana" / "dashboards"
TOKEN = "glsa_store-ops-token"


@dataclass
class FakeGrafana:
    """An HTTP server answering every request with ``status`` and ``reply``, keeping each
    request's method, path, headers and JSON body."""

    status: int = 200
    reply: dict[str, Any] = field(default_factory=lambda: {"status": "success"})
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            fake.requests.append(
                {
                    "method": "POST",
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "json": json.loads(body),
                }
            )
            answer = json.dumps(fake.reply).encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def push(*argv: str, without: str = "") -> subprocess.CompletedProcess[str]:
    """``omnistream grafana push ARGV…`` in a fresh interpreter (``without``: top-level
    packages made unimportable, as in an install without their extra)."""
    code = (
        "import sys\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {without.split(',')!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from omnistream.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "grafana", "push", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        cwd=ROOT,
    )


def test_push_uploads_each_checked_in_board_with_the_token_and_folder(
    grafana: FakeGrafana,
) -> None:
    reply = push("--url", grafana.url, "--token", TOKEN, "--folder-uid", "retail-ops")
    assert reply.returncode == 0, reply.stderr
    expected = {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in BOARDS_DIR.glob("*.json")
    }
    assert len(expected) >= 3
    assert len(grafana.requests) == len(expected)
    sent = {}
    for request in grafana.requests:
        assert request["path"] == "/api/dashboards/db"
        assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
        assert request["headers"]["content-type"].startswith("application/json")
        payload = request["json"]
        assert payload["overwrite"] is True
        assert payload["folderUid"] == "retail-ops"
        sent[payload["dashboard"]["uid"]] = payload["dashboard"]
    assert sent == expected, "the pushed boards differ from grafana/dashboards"
    pushed = [line for line in reply.stdout.splitlines() if line.startswith("pushed ")]
    assert sorted(line.split()[1] for line in pushed) == sorted(expected)


def test_push_without_a_folder_sends_none(grafana: FakeGrafana) -> None:
    reply = push("--url", grafana.url, "--token", TOKEN)
    assert reply.returncode == 0, reply.stderr
    assert grafana.requests and all("folderUid" not in r["json"] for r in grafana.requests)


def one_line(reply: subprocess.CompletedProcess[str]) -> str:
    assert reply.returncode == 1, reply.stderr
    lines = reply.stderr.splitlines()
    assert len(lines) == 1, reply.stderr
    return lines[0]


def test_a_refused_token_is_one_line_and_stops_at_the_first_board(grafana: FakeGrafana) -> None:
    grafana.status, grafana.reply = 401, {"message": "invalid API key"}
    line = one_line(push("--url", grafana.url, "--token", "expired"))
    assert "token refused" in line and grafana.url in line
    assert len(grafana.requests) == 1


def test_a_missing_folder_names_grafanas_reason(grafana: FakeGrafana) -> None:
    grafana.status, grafana.reply = 400, {"message": "folder not found"}
    line = one_line(push("--url", grafana.url, "--token", TOKEN, "--folder-uid", "nope"))
    assert "folder not found" in line and "400" in line


def test_a_server_error_is_one_line(grafana: FakeGrafana) -> None:
    grafana.status, grafana.reply = 500, {"message": "database is locked"}
    line = one_line(push("--url", grafana.url, "--token", TOKEN))
    assert "500: database is locked" in line


def test_a_closed_port_is_one_line_naming_the_address() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_line(push("--url", url, "--token", TOKEN))
    assert line == f"omnistream: cannot connect to Grafana at {url}: Connection refused"


def test_the_password_of_a_url_is_not_shown() -> None:
    url = f"http://admin:hunter2@127.0.0.1:{free_port()}"
    line = one_line(push("--url", url, "--token", TOKEN))
    assert "hunter2" not in line and "admin" not in line


def test_without_the_grafana_extra_it_says_how_to_install_it(grafana: FakeGrafana) -> None:
    line = one_line(push("--url", grafana.url, "--token", TOKEN, without="grafana_client"))
    assert "pip install 'omnistream[grafana]'" in line
    assert grafana.requests == []
