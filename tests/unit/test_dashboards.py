"""The checked-in Grafana boards are what ``omnistream.dashboards`` renders."""

from __future__ import annotations

import json

from omnistream.dashboards import BOARDS, OUT_DIR, rendered


def test_checked_in_boards_match_the_code() -> None:
    for name, content in rendered().items():
        assert (OUT_DIR / name).read_bytes() == content, (
            f"{name} is stale: run `python -m omnistream.dashboards`"
        )


def test_boards_are_well_formed() -> None:
    for board in BOARDS:
        doc = json.loads(rendered()[f"{board.uid}.json"])
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
        for panel in doc["panels"]:
            assert panel["datasource"]["uid"] == "prometheus"
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
            assert "sku" not in json.dumps(panel["targets"])  # no per-sku series


def test_push_uploads_every_board_with_the_token() -> None:
    """Against a recording stand-in for Grafana's HTTP API (no Grafana server here)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from omnistream.dashboards import push_boards

    received: list[tuple[str, str, dict]] = []

    class Grafana(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, self.headers.get("Authorization", ""), body))
            reply = json.dumps({"status": "success", "uid": body["dashboard"]["uid"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Grafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert push_boards(url, "glsa_test_token", folder_uid="ops") == 0
    finally:
        server.shutdown()
        server.server_close()
    assert [path for path, _, _ in received] == ["/api/dashboards/db"] * len(BOARDS)
    assert all(auth == "Bearer glsa_test_token" for _, auth, _ in received)
    assert {body["dashboard"]["uid"] for _, _, body in received} == {b.uid for b in BOARDS}
    assert all(body["overwrite"] and body["folderUid"] == "ops" for _, _, body in received)
