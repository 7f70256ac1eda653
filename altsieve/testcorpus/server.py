"""Loopback HTTP server that plays a ``TestCorpus``: errors, throttling, redirects, slow and stalled bodies.

Every request is handled in its own daemon thread, so a stalled response never blocks the others.
``stop()`` wakes every waiting handler (stall/delay wait on an event) and shuts down the open
sockets, so it returns promptly even while clients are stuck on stalled responses.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from altsieve.testcorpus.generator import ServedResponse, TestCorpus, format_from_path, generate_corpus

# How much of a stalled body goes out before the stall: enough for a client to see a started response.
_STALL_PREFIX_BYTES = 256
# Pieces a slow body is cut into; the waits between them add up to ``delay_s``.
_SLOW_PIECES = 10
_REASONS = {
    404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with Content-Length, like real image hosts
    timeout = 60  # an idle keep-alive connection frees its thread after this long
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass  # tests and benchmarks make thousands of requests: stay quiet

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path
        nth = owner._count_request(path)
        response = owner.corpus.responses.get(path)
        try:
            if response is None:
                self._send_simple(404, {})
            elif nth <= response.fail_first:
                self._send_simple(response.fail_status, response.fail_headers)
            else:
                self._send_response(response, send_body)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # client gave up (timeout) or the server is stopping

    def _send_simple(self, status: int, headers: dict[str, str]) -> None:
        body = _REASONS.get(status, "Error").encode()
        self._send_head(status, {"Content-Type": "text/plain; charset=utf-8", **headers}, len(body))
        self.wfile.write(body)

    def _send_head(self, status: int, headers: dict[str, str], length: int) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send_response(self, response: ServedResponse, send_body: bool) -> None:
        headers = dict(response.headers)
        if response.redirect_to is not None:
            headers["Location"] = response.redirect_to
        self._send_head(response.status, headers, len(response.body))
        if not send_body:
            return
        if response.stall_s > 0:
            self._send_stalled(response.body, response.stall_s)
        elif response.delay_s > 0:
            self._send_slowly(response.body, response.delay_s)
        else:
            self.wfile.write(response.body)

    def _send_stalled(self, body: bytes, stall_s: float) -> None:
        self.wfile.write(body[:_STALL_PREFIX_BYTES])
        self.wfile.flush()
        if self.server.owner._stopping.wait(stall_s):
            self.close_connection = True
            return
        self.wfile.write(body[_STALL_PREFIX_BYTES:])

    def _send_slowly(self, body: bytes, delay_s: float) -> None:
        step = -(-len(body) // _SLOW_PIECES) or 1
        pause = delay_s / _SLOW_PIECES
        for start in range(0, len(body), step):
            self.wfile.write(body[start : start + step])
            self.wfile.flush()
            if self.server.owner._stopping.wait(pause):
                self.close_connection = True
                return


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for handlers stuck in a stall
    allow_reuse_address = True
    request_queue_size = 1024  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], owner: CorpusServer) -> None:
        self.owner = owner
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that give up (timeouts, stalled responses) reset their connections: expected here.
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError, BrokenPipeError)):
            super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by its handler
                sock.shutdown(socket.SHUT_RDWR)


class CorpusServer:
    """Serves ``corpus.responses`` on a loopback port; ``start()`` returns the base URL.

    Usable as a context manager. ``request_count(path)`` tells how many requests a path got, which
    is also what ``fail_first`` counts (over the server's lifetime: a retry run must use the same server).
    """

    def __init__(self, corpus: TestCorpus, host: str = "127.0.0.1", port: int = 0) -> None:
        self.corpus = corpus
        self.host = host
        self.port = port
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> str:
        if self._httpd is None:
            self._stopping.clear()
            self._httpd = _HTTPServer((self.host, self.port), self)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="corpus-server", daemon=True
            )
            self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes stalled and slow handlers first
        self._httpd.shutdown()
        self._httpd.close_open_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def request_count(self, path: str) -> int:
        with self._counts_lock:
            return self._counts[path]

    def _count_request(self, path: str) -> int:
        """Count a request and return its 1-based number for that path."""
        with self._counts_lock:
            self._counts[path] += 1
            return self._counts[path]

    def __enter__(self) -> CorpusServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever_cli(
    n_pairs: int, port: int, input_path: str, seed: int = 0, texture: bool = False, host: str = "127.0.0.1"
) -> int:
    """Serve a corpus until Ctrl-C; write the input file (format from its extension) and truth.parquet beside it.

    Prints the base URL alone on stdout's first line so scripts can read it; details go to stderr.
    """
    corpus = generate_corpus(n_pairs, seed=seed, texture=texture)
    with CorpusServer(corpus, host, port) as server:
        corpus.write_input(input_path, server.base_url, format_from_path(input_path))
        truth_path = os.path.join(os.path.dirname(os.path.abspath(input_path)), "truth.parquet")
        corpus.write_truth(truth_path)
        print(server.base_url, flush=True)
        print(f"serving {n_pairs} pairs; input {input_path}, truth {truth_path}; Ctrl-C to stop",
              file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            _wait_for_interrupt()
    return 0


def _wait_for_interrupt() -> None:
    while True:
        time.sleep(3600)
