"""``scrape`` answers None, never raises, when a process's metrics endpoint is cut off."""

from __future__ import annotations

import socket
import threading

from omnistream.processes import scrape


def test_a_reply_cut_off_mid_body_is_no_scrape() -> None:
    """A flow stopped while it answers sends fewer bytes than announced (IncompleteRead);
    the bench's sampler crashed on it."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_and_hang_up() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8680\r\n\r\n"
                b"omnistream_events_consumed_total 1\n"
            )

    thread = threading.Thread(target=answer_and_hang_up)
    thread.start()
    try:
        assert scrape(port) is None
    finally:
        thread.join()
        server.close()


def test_nothing_listening_is_no_scrape() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    assert scrape(port) is None
