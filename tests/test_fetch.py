"""Tests for altsieve.transforms.fetch against servers on 127.0.0.1 only.

Two autouse guards keep every test on loopback: a fake resolver (no DNS query ever leaves the process)
and a wrapper around ``socket.socket.connect`` that records every target and refuses non-loopback ones
without connecting. The blocked-address tests assert on that record, so "no connection was attempted"
is proven rather than assumed.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import itertools
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from altsieve.core import reasons
from altsieve.core.config import DownloadConfig
from altsieve.transforms.addresses import blocked_reason, is_blocked_address, parse_networks
from altsieve.transforms.fetch import Fetcher, FetchWindow, parse_retry_after
from altsieve.transforms.optout import robots_optout

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LOOPBACK = ["127.0.0.0/8"]
# robots.txt and /.well-known/tdmrep.json by Host name (FakeDNS points these names at the test server).
ROBOTS_BY_HOST = {
    "robots-a.test": "User-agent: *\nDisallow: /\n\nUser-agent: altsieve\nDisallow: /private/\n",
    "robots-b.test": "User-agent: img2dataset\nDisallow: /\n",
    "robots-c.test": "User-agent: *\nDisallow: /ok\n",
}
TDMREP_BY_HOST = {
    "tdm-a.test": '[{"location": "/big*", "tdm-reservation": 1, "tdm-policy": "https://x.test/p"},'
                  ' {"location": "/", "tdm-reservation": 0}]',
}


# ---------------------------------------------------------------------------------------------------------
# Test server
# ---------------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # dozens of connections at once must not wait in the kernel's backlog (5 by default)
    block_on_close = False  # stalled handlers must not hold up teardown

    def server_bind(self) -> None:
        # Why: HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup we do not want.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.active = 0
        self.max_active = 0
        self.peers: dict[str, list[tuple[str, int]]] = {}

    def handle_error(self, request: object, client_address: object) -> None:
        # Why: clients here hang up on purpose (timeouts, too-large bodies); the tracebacks are noise.
        pass

    def bump(self, key: str) -> int:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is exercised
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the base class
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        route = parts.path
        key = q.get("key", route)
        with self.server.lock:
            self.server.peers.setdefault(key, []).append(self.client_address)
        try:
            self._route(route, q, key)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, route: str, q: dict[str, str], key: str) -> None:
        port = self.server.server_address[1]
        if route == "/ok":
            self._send(200, IMAGE, {"Content-Type": "image/png"})
        elif route == "/host":
            self._send(200, self.headers.get("Host", "").encode(), {"Content-Type": "text/plain"})
        elif route.startswith("/status/"):
            status = int(route.rsplit("/", 1)[1])
            self.server.bump(key)
            self._send(status, b"error page", {"Content-Type": "text/html"})
        elif route == "/flaky":
            # First n requests for this key fail with `status`, then the image.
            n = self.server.bump(key)
            if n <= int(q.get("n", "1")):
                headers = {"Retry-After": q["ra"]} if "ra" in q else {}
                self._send(int(q["status"]), b"busy", headers)
            else:
                self._send(200, IMAGE, {"Content-Type": "image/png"})
        elif route == "/stall":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(IMAGE[:10])
            time.sleep(float(q.get("s", "2")))
            self.close_connection = True
        elif route == "/drip":
            chunks, delay, size = int(q.get("chunks", "5")), float(q.get("delay", "0.05")), int(q.get("size", "100"))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(chunks * size))
            self.end_headers()
            for _ in range(chunks):
                self.wfile.write(b"x" * size)
                time.sleep(delay)
        elif route == "/redirect":
            n = int(q.get("n", "1"))
            if n <= 0:
                location = "/ok"
            elif n % 2:
                location = f"http://127.0.0.1:{port}/redirect?n={n - 1}"  # absolute
            else:
                location = f"redirect?n={n - 1}"  # relative, resolved with urljoin
            self._send(302, b"", {"Location": location})
        elif route == "/loop":
            self._send(301, b"", {"Location": "/loop"})
        elif route == "/redirect-to":
            self._send(int(q.get("status", "302")), b"", {"Location": q["to"]})
        elif route == "/big":
            self._send(200, b"y" * int(q.get("size", "5000")), {"Content-Type": "image/png"})
        elif route == "/stream":
            # No Content-Length: the body ends when the connection closes, so only the running count can stop us.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.close_connection = True
            for _ in range(int(q.get("chunks", "160"))):
                self.wfile.write(b"z" * 65536)
        elif route == "/robots":
            self._send(200, IMAGE, {"Content-Type": "image/png", "X-Robots-Tag": q["v"]})
        elif route == "/capacity":
            # A host that takes n requests at once and answers 503 to any beyond them.
            with self.server.lock:
                busy = self.server.counters.get(key, 0)
                if busy < int(q["n"]):
                    self.server.counters[key] = busy + 1
            if busy >= int(q["n"]):
                self.server.bump(f"{key}:503")
                self._send(503, b"busy", {"Content-Type": "text/plain"})
                return
            time.sleep(float(q.get("d", "0.05")))
            with self.server.lock:
                self.server.counters[key] -= 1
            self._send(200, IMAGE, {"Content-Type": "image/png"})
        elif route == "/slow":
            with self.server.lock:
                self.server.active += 1
                self.server.max_active = max(self.server.max_active, self.server.active)
            time.sleep(float(q.get("d", "0.1")))
            with self.server.lock:
                self.server.active -= 1
            self._send(200, IMAGE, {"Content-Type": "image/png"})
        elif route == "/robots.txt":
            host = self.headers.get("Host", "").split(":")[0]
            self.server.bump(f"robots:{host}")
            if host == "robots-down.test":
                self._send(503, b"busy")
            elif host in ROBOTS_BY_HOST:
                self._send(200, ROBOTS_BY_HOST[host].encode(), {"Content-Type": "text/plain"})
            else:
                self._send(404, b"no robots.txt")
        elif route == "/.well-known/tdmrep.json":
            host = self.headers.get("Host", "").split(":")[0]
            self.server.bump(f"tdmrep:{host}")
            if host in TDMREP_BY_HOST:
                self._send(200, TDMREP_BY_HOST[host].encode(), {"Content-Type": "application/json"})
            else:
                self._send(404, b"no tdmrep.json")
        elif route == "/tdm":
            self._send(200, IMAGE, {"Content-Type": "image/png", "tdm-reservation": q.get("v", "1")})
        elif route == "/over":
            # More bytes than Content-Length, in the same write (late=1: after a pause, on the idle connection).
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            if q.get("late"):
                self.wfile.write(IMAGE)
                self.wfile.flush()
                time.sleep(0.05)
                self.wfile.write(b"EXTRA BYTES THE SERVER SHOULD NOT HAVE SENT")
            else:
                self.wfile.write(IMAGE + b"EXTRA BYTES THE SERVER SHOULD NOT HAVE SENT")
        elif route == "/close-after":
            # Claims keep-alive but closes: the client's pooled connection goes stale.
            self._send(200, IMAGE, {"Content-Type": "image/png"})
            self.close_connection = True
        else:
            self._send(404, b"no route")


def _start(server: _Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    _start(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def base(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


# ---------------------------------------------------------------------------------------------------------
# Network guards: fake DNS and a connect recorder that refuses anything but loopback
# ---------------------------------------------------------------------------------------------------------

_real_getaddrinfo = socket.getaddrinfo


class FakeDNS:
    def __init__(self) -> None:
        self.records: dict[str, list[str] | Callable[[], list[str]]] = {}
        self.errors: dict[str, int] = {}
        self.calls: list[str] = []

    def getaddrinfo(self, host: str, port: object, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0):  # noqa: A002
        self.calls.append(host)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:  # a literal: the real resolver answers these without any network traffic
            return _real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        if host in self.errors:
            raise socket.gaierror(self.errors[host], "fake resolver failure")
        record = self.records.get(host)
        if record is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        ips = record() if callable(record) else record
        out = []
        for ip in ips:
            out.extend(_real_getaddrinfo(ip, port, family, type, proto, flags | socket.AI_NUMERICHOST))
        return out


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a socket tried to connect to; non-loopback targets are refused before connecting."""
    seen: list[str] = []
    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: tuple) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        seen.append(host)
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise PermissionError(f"test guard: refused to connect to {host}")
        real_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: tuple) -> int:
        guarded_connect(self, address)
        return 0

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    return seen


_open_fetchers: list[Fetcher] = []


def _options(**overrides: object) -> DownloadConfig:
    opts = {
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "allow_private_addresses": LOOPBACK,
        # The OS resolver goes through socket.getaddrinfo, which the FakeDNS fixture answers.
        "dns_resolver": "system",
    }
    opts.update(overrides)
    if "per_host_concurrency" in overrides:  # a test that names the cap means one that never grows unless it says
        opts.setdefault("per_host_concurrency_max", overrides["per_host_concurrency"])
    return DownloadConfig(**opts)  # type: ignore[arg-type]


def _fetcher(**overrides: object) -> Fetcher:
    fetcher = Fetcher(_options(**overrides))
    _open_fetchers.append(fetcher)
    return fetcher


@pytest.fixture(autouse=True)
def _close_fetchers() -> Iterator[None]:
    # Why: pooled keep-alive sockets of a Fetcher that is never closed would only be closed by the GC.
    yield
    while _open_fetchers:
        _open_fetchers.pop().close()


# ---------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "::1",
        "fe80::1",
        "224.0.0.1",
        "::ffff:10.0.0.1",
        "0.0.0.0",
        "::",
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",  # carrier-grade NAT
        "255.255.255.255",
        "240.0.0.1",
        "ff02::1",
        "fc00::1",
        "fec0::1",  # deprecated site-local: is_global says True
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:a00:1::",  # 6to4 wrapping 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "::a00:1",  # IPv4-compatible 10.0.0.1
    ],
)
def test_blocked_addresses(address: str) -> None:
    assert is_blocked_address(address)
    assert blocked_reason(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_allowed(address: str) -> None:
    assert not is_blocked_address(address)


def test_allowed_private_networks() -> None:
    nets = parse_networks(["127.0.0.0/8", "fd00::/8"])
    assert not is_blocked_address("127.0.0.1", nets)
    assert not is_blocked_address("::ffff:127.0.0.1", nets)
    assert not is_blocked_address("fd12::1", nets)
    assert is_blocked_address("10.0.0.1", nets)
    assert is_blocked_address("::1", nets)
    with pytest.raises(ValueError):
        DownloadConfig(allow_private_addresses=["not-a-cidr"])


@pytest.mark.parametrize(
    ("values", "opted_out"),
    [
        (["noai"], True),
        (["noimageai"], True),
        (["NoAI"], True),
        (["noindex, noimageai"], True),
        (["altsieve: noimageai"], True),
        (["img2dataset: noai"], True),
        (["*: noai"], True),
        (["otherbot: noai"], False),
        (["otherbot: noai, noimageai"], False),  # still scoped to otherbot
        (["otherbot: noindex", "noai"], True),
        (["googlebot: noindex, altsieve: noai"], True),
        (["unavailable_after: 25 Jun 2030 15:00:00 PST, noai"], True),
        (["noindex, nofollow"], False),
        ([], False),
    ],
)
def test_robots_optout_parsing(values: list[str], opted_out: bool) -> None:
    assert (robots_optout(values, ("altsieve", "img2dataset")) is not None) is opted_out


def test_parse_retry_after() -> None:
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=20), usegmt=True)
    assert 15 < parse_retry_after(future) <= 20  # type: ignore[operator]
    past = email.utils.format_datetime(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), usegmt=True)
    assert parse_retry_after(past) == 0.0


# ---------------------------------------------------------------------------------------------------------
# URL validation (no network)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/image.png", reasons.URL_SCHEME_NOT_ALLOWED),
        ("file:///etc/passwd", reasons.URL_SCHEME_NOT_ALLOWED),
        ("javascript:alert(1)", reasons.URL_SCHEME_NOT_ALLOWED),
        ("//127.0.0.1/x.png", reasons.URL_SCHEME_NOT_ALLOWED),
        ("http://", reasons.URL_INVALID),
        ("http://[::1/x", reasons.URL_INVALID),
        ("http://127.0.0.1:99999/x", reasons.URL_INVALID),
        ("http://bad host.test/x", reasons.URL_INVALID),
        ("", reasons.URL_MISSING),
        ("   ", reasons.URL_MISSING),
    ],
)
def test_url_rejected_without_network(url: str, reason: str, connects: list[str], dns: FakeDNS) -> None:
    result = _fetcher().fetch(url)
    assert result.reason == reason
    assert result.attempts == 0 and result.body is None
    assert connects == [] and dns.calls == []


# ---------------------------------------------------------------------------------------------------------
# HTTP behaviour
# ---------------------------------------------------------------------------------------------------------


def test_ok(base: str) -> None:
    result = _fetcher().fetch(f"{base}/ok")
    assert result.reason is None and result.ok and not result.transient
    assert result.body == IMAGE
    assert result.status_code == 200
    assert result.content_type == "image/png"
    assert result.attempts == 1
    assert result.final_url == f"{base}/ok"


def test_unsafe_characters_are_quoted(base: str) -> None:
    # A space or newline in a path must neither break the request line nor inject a header.
    # (urlsplit already drops CR/LF/TAB; everything else unsafe is percent-encoded.)
    result = _fetcher().fetch(f"{base}/ok bad\r\nX-Injected: 1\x00é")
    assert result.status_code == 404 and result.reason == reasons.DOWNLOAD_NOT_FOUND
    assert result.final_url == f"{base}/ok%20badX-Injected:%201%00%C3%A9"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(404, reasons.DOWNLOAD_NOT_FOUND), (410, reasons.DOWNLOAD_NOT_FOUND), (403, reasons.DOWNLOAD_HTTP_ERROR)],
)
def test_client_errors_not_retried(server: _Server, base: str, status: int, reason: str) -> None:
    key = f"client-{status}"
    result = _fetcher().fetch(f"{base}/status/{status}?key={key}")
    assert result.reason == reason
    assert result.status_code == status
    assert result.error_message == f"HTTP {status}"
    assert result.attempts == 1 and server.counters[key] == 1
    assert not result.transient


def test_500_retried_then_server_error(server: _Server, base: str) -> None:
    result = _fetcher(retries=2).fetch(f"{base}/status/500?key=always500")
    assert result.reason == reasons.DOWNLOAD_SERVER_ERROR
    assert result.attempts == 3 and server.counters["always500"] == 3
    assert result.transient and result.status_code == 500


def test_503_then_ok(base: str) -> None:
    result = _fetcher().fetch(f"{base}/flaky?key=f503&status=503&n=1")
    assert result.reason is None and result.body == IMAGE
    assert result.attempts == 2


def test_429_honours_retry_after(base: str) -> None:
    # No backoff of our own, so the ~1 s wait can only come from Retry-After.
    result = _fetcher(backoff_base_s=0.0).fetch(f"{base}/flaky?key=f429&status=429&n=1&ra=1")
    assert result.reason is None and result.attempts == 2
    assert 0.95 <= result.elapsed_s < 3


def test_retry_after_is_capped(base: str) -> None:
    result = _fetcher(retry_after_max_s=0.1, retries=1).fetch(f"{base}/flaky?key=cap429&status=429&n=5&ra=100")
    assert result.reason == reasons.DOWNLOAD_RATE_LIMITED
    assert result.elapsed_s < 2


def test_429_always_rate_limited(server: _Server, base: str) -> None:
    result = _fetcher(retries=2).fetch(f"{base}/flaky?key=a429&status=429&n=99&ra=0")
    assert result.reason == reasons.DOWNLOAD_RATE_LIMITED
    assert result.attempts == 3 and server.counters["a429"] == 3
    assert result.transient


def test_stall_after_headers_times_out(base: str) -> None:
    result = _fetcher(read_timeout_s=0.5, retries=0).fetch(f"{base}/stall?s=2")
    assert result.reason == reasons.DOWNLOAD_TIMEOUT
    assert result.transient
    assert "timeout after" in (result.error_message or "")
    assert result.elapsed_s < 1.5


def test_stall_is_retried(base: str) -> None:
    # Timeouts are retried in line only when asked (by default --retry-failed revisits them).
    result = _fetcher(read_timeout_s=0.3, retries=1, retry_timeouts=True).fetch(f"{base}/stall?s=1")
    assert result.reason == reasons.DOWNLOAD_TIMEOUT and result.attempts == 2


def test_slow_drip_within_time(base: str) -> None:
    result = _fetcher(read_timeout_s=1.0).fetch(f"{base}/drip?chunks=5&delay=0.05&size=100")
    assert result.reason is None and result.body == b"x" * 500


def test_slow_drip_hits_total_deadline(base: str) -> None:
    # Every byte arrives well within the idle limit; only the whole-response deadline can stop this.
    result = _fetcher(read_timeout_s=0.5, retries=0).fetch(f"{base}/drip?chunks=40&delay=0.1&size=1")
    assert result.reason == reasons.DOWNLOAD_TIMEOUT
    assert result.elapsed_s < 1.2


def test_redirect_chain(base: str) -> None:
    result = _fetcher().fetch(f"{base}/redirect?n=4")
    assert result.reason is None and result.body == IMAGE
    assert result.final_url == f"{base}/ok"
    assert result.attempts == 1


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_redirect_statuses(base: str, status: int) -> None:
    result = _fetcher().fetch(f"{base}/redirect-to?status={status}&to=/ok")
    assert result.reason is None and result.body == IMAGE


def test_too_many_redirects(base: str) -> None:
    result = _fetcher(max_redirects=3).fetch(f"{base}/loop")
    assert result.reason == reasons.DOWNLOAD_TOO_MANY_REDIRECTS
    assert result.status_code == 301


def test_exactly_max_redirects_is_fine(base: str) -> None:
    # /redirect?n=4 takes 5 hops: n=4, 3, 2, 1, 0 -> /ok.
    assert _fetcher(max_redirects=5).fetch(f"{base}/redirect?n=4").reason is None
    assert _fetcher(max_redirects=4).fetch(f"{base}/redirect?n=4").reason == reasons.DOWNLOAD_TOO_MANY_REDIRECTS


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/", "http://[::ffff:10.1.2.3]/", "http://[fe80::1]/"],
)
def test_redirect_to_blocked_address(base: str, connects: list[str], target: str) -> None:
    result = _fetcher().fetch(f"{base}/redirect-to?to={quote(target, safe='')}")
    assert result.reason == reasons.DOWNLOAD_BLOCKED_ADDRESS
    assert result.final_url is not None and not result.transient
    assert ipaddress.ip_address(urlsplit(result.final_url).hostname) == ipaddress.ip_address(urlsplit(target).hostname)
    # Only the loopback test server was ever contacted; the blocked hop got no connect() at all.
    assert connects and all(ipaddress.ip_address(h).is_loopback for h in connects)


def test_redirect_to_other_scheme(base: str) -> None:
    result = _fetcher().fetch(f"{base}/redirect-to?to={quote('ftp://127.0.0.1/x', safe='')}")
    assert result.reason == reasons.URL_SCHEME_NOT_ALLOWED


def test_redirect_without_location(base: str) -> None:
    result = _fetcher().fetch(f"{base}/status/302")
    assert result.reason == reasons.DOWNLOAD_HTTP_ERROR


def test_loopback_blocked_by_default(base: str, connects: list[str]) -> None:
    result = _fetcher(allow_private_addresses=DownloadConfig().allow_private_addresses).fetch(f"{base}/ok")
    assert result.reason == reasons.DOWNLOAD_BLOCKED_ADDRESS
    assert "loopback" in (result.error_message or "")
    assert result.attempts == 1
    assert connects == []


def test_body_too_large_by_content_length(base: str) -> None:
    result = _fetcher(max_bytes=1000).fetch(f"{base}/big?size=5000")
    assert result.reason == reasons.DOWNLOAD_TOO_LARGE and result.body is None


def test_body_exactly_max_bytes(base: str) -> None:
    result = _fetcher(max_bytes=5000).fetch(f"{base}/big?size=5000")
    assert result.reason is None and len(result.body or b"") == 5000


def test_body_too_large_while_streaming(base: str) -> None:
    # 10 MB with no Content-Length; we must stop after ~100 kB instead of reading it all.
    result = _fetcher(max_bytes=100_000).fetch(f"{base}/stream?chunks=160")
    assert result.reason == reasons.DOWNLOAD_TOO_LARGE
    assert result.elapsed_s < 2


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("noai", reasons.DOWNLOAD_ROBOTS_OPTOUT),
        ("altsieve: noimageai", reasons.DOWNLOAD_ROBOTS_OPTOUT),
        ("otherbot: noai", None),
    ],
)
def test_robots_optout(base: str, value: str, reason: str | None) -> None:
    result = _fetcher().fetch(f"{base}/robots?v={quote(value)}")
    assert result.reason == reason
    assert (result.body is None) == (reason is not None)


def test_robots_optout_can_be_disabled(base: str) -> None:
    result = _fetcher(respect_robots_optout=False).fetch(f"{base}/robots?v=noai")
    assert result.reason is None and result.body == IMAGE


def test_connection_refused(connects: list[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _fetcher(retries=2).fetch(f"http://127.0.0.1:{port}/x")
    assert result.reason == reasons.DOWNLOAD_CONNECTION_ERROR
    assert result.error_message == "connection refused"
    assert result.attempts == 3 and result.transient


# ---------------------------------------------------------------------------------------------------------
# DNS handling
# ---------------------------------------------------------------------------------------------------------


def test_dns_failure(dns: FakeDNS, connects: list[str]) -> None:
    result = _fetcher().fetch("http://missing.test/x.png")
    assert result.reason == reasons.DOWNLOAD_DNS_ERROR
    assert result.attempts == 1  # NXDOMAIN is not retried within a fetch
    assert connects == []


def test_dns_temporary_failure_retried(dns: FakeDNS) -> None:
    dns.errors["flaky-dns.test"] = socket.EAI_AGAIN
    result = _fetcher(retries=2).fetch("http://flaky-dns.test/x.png")
    assert result.reason == reasons.DOWNLOAD_DNS_ERROR and result.attempts == 3


def test_hostname_uses_host_header(server: _Server, dns: FakeDNS) -> None:
    dns.records["img.test"] = ["127.0.0.1"]
    port = server.server_address[1]
    result = _fetcher().fetch(f"http://IMG.test:{port}/host")
    assert result.body == f"img.test:{port}".encode()


def test_any_private_address_blocks_host(dns: FakeDNS, connects: list[str], server: _Server) -> None:
    dns.records["mixed.test"] = ["127.0.0.1", "10.0.0.5"]
    result = _fetcher().fetch(f"http://mixed.test:{server.server_address[1]}/ok")
    assert result.reason == reasons.DOWNLOAD_BLOCKED_ADDRESS
    assert "10.0.0.5" in (result.error_message or "")
    assert connects == []


def test_connects_to_validated_ip_without_second_lookup(dns: FakeDNS, connects: list[str], server: _Server) -> None:
    # DNS rebinding: the first answer is allowed, any later one points inside the network.
    answers = iter([["127.0.0.1"]])
    dns.records["rebind.test"] = lambda: next(answers, ["10.0.0.7"])
    result = _fetcher().fetch(f"http://rebind.test:{server.server_address[1]}/ok")
    assert result.reason is None
    assert dns.calls.count("rebind.test") == 1
    assert connects == ["127.0.0.1"]


# ---------------------------------------------------------------------------------------------------------
# Connection reuse
# ---------------------------------------------------------------------------------------------------------


def test_keep_alive_reuses_connection(server: _Server, base: str) -> None:
    fetcher = _fetcher()
    for _ in range(3):
        assert fetcher.fetch(f"{base}/ok?key=reuse").reason is None
    assert len(set(server.peers["reuse"])) == 1
    fetcher.close()


def test_stale_pooled_connection_is_replaced(server: _Server, base: str) -> None:
    fetcher = _fetcher(retries=0)
    assert fetcher.fetch(f"{base}/close-after?key=stale").reason is None
    time.sleep(0.05)  # let the server's close reach us
    result = fetcher.fetch(f"{base}/ok?key=stale")
    assert result.reason is None and result.attempts == 1
    assert len(set(server.peers["stale"])) == 2
    fetcher.close()


# ---------------------------------------------------------------------------------------------------------
# fetch_many
# ---------------------------------------------------------------------------------------------------------


def test_fetch_many_per_host_bound(server: _Server, base: str) -> None:
    server.max_active = 0
    fetcher = _fetcher(concurrency=8, per_host_concurrency=3)
    results = dict(fetcher.fetch_many((i, f"{base}/slow?d=0.1") for i in range(18)))
    fetcher.close()
    assert sorted(results) == list(range(18))
    assert all(r.reason is None for r in results.values())
    assert server.max_active == 3


def test_fetch_many_global_bound(server: _Server, dns: FakeDNS) -> None:
    for name in ("a.test", "b.test", "c.test", "d.test", "e.test"):
        dns.records[name] = ["127.0.0.1"]
    port = server.server_address[1]
    urls = [(i, f"http://{'abcde'[i % 5]}.test:{port}/slow?d=0.1") for i in range(20)]
    server.max_active = 0
    fetcher = _fetcher(concurrency=4, per_host_concurrency=16)
    results = list(fetcher.fetch_many(urls))
    fetcher.close()
    assert len(results) == 20 and all(r.reason is None for _, r in results)
    assert server.max_active <= 4


def test_fetch_many_consumes_input_lazily(base: str) -> None:
    pulled = 0

    def endless() -> Iterator[tuple[int, str]]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i, f"{base}/ok"

    fetcher = _fetcher(concurrency=4)
    stream = fetcher.fetch_many(endless())
    first = [next(stream) for _ in range(5)]
    assert all(r.reason is None for _, r in first)
    assert pulled <= 4 + 5
    stream.close()  # type: ignore[attr-defined]
    fetcher.close()


def _submit_until_full(window: FetchWindow[int], url: str, limit: int = 50, settle_s: float = 1.0) -> int:
    """Submit without taking until the window stays full for ``settle_s`` (its fetches done); the count submitted."""
    submitted = 0
    while submitted < limit:
        deadline = time.monotonic() + settle_s
        while window.full and time.monotonic() < deadline:
            time.sleep(0.02)
        if window.full:
            return submitted
        window.submit(submitted, url)
        window.flush()
        submitted += 1
    return submitted


def test_window_runs_ahead_of_a_slow_consumer(base: str) -> None:
    """Finished results wait outside the running slots, up to the run-ahead bound, so a slow decoder does not
    idle the network; without run-ahead a finished result holds its slot until taken."""
    fetcher = _fetcher(concurrency=2)
    ahead: FetchWindow[int] = FetchWindow(fetcher, run_ahead_bytes=10**9, run_ahead_results=5)
    # Full once five finished results wait: so at least five submitted, and at most one more while two ran.
    submitted = _submit_until_full(ahead, f"{base}/ok")
    assert 5 <= submitted <= 6
    taken = [ahead.take() for _ in range(submitted)]
    assert sorted(key for key, _ in taken) == list(range(submitted)) and all(r.ok for _, r in taken)
    assert ahead.take() is None

    by_bytes: FetchWindow[int] = FetchWindow(fetcher, run_ahead_bytes=1, run_ahead_results=100)
    assert _submit_until_full(by_bytes, f"{base}/ok") == 2  # one finished body is over a 1-byte bound
    plain: FetchWindow[int] = FetchWindow(fetcher)
    assert _submit_until_full(plain, f"{base}/ok") == 2
    for window in (by_bytes, plain):
        assert all(window.take()[1].ok for _ in range(2))
    fetcher.close()


def test_fetch_many_empty() -> None:
    assert list(_fetcher().fetch_many([])) == []


def test_fetch_many_mixed_outcomes(base: str) -> None:
    urls = [("ok", f"{base}/ok"), ("missing", f"{base}/status/404"), ("ftp", "ftp://x/y"), ("big", f"{base}/big")]
    got = {k: r.reason for k, r in _fetcher(max_bytes=2000).fetch_many(urls)}
    assert got == {
        "ok": None,
        "missing": reasons.DOWNLOAD_NOT_FOUND,
        "ftp": reasons.URL_SCHEME_NOT_ALLOWED,
        "big": reasons.DOWNLOAD_TOO_LARGE,
    }


# ---------------------------------------------------------------------------------------------------------
# HTTPS: SNI and certificate verification against the URL's host while connecting to the pinned IP
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Server, str, list[str]]]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "altsieve test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "img.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("img.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    sni: list[str] = []
    server_ctx.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment,return-value]

    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    _start(srv)
    yield srv, ca_cert.public_bytes(serialization.Encoding.PEM).decode(), sni
    srv.shutdown()
    srv.server_close()


def test_https_verifies_hostname_and_sends_sni(tls: tuple[_Server, str, list[str]], dns: FakeDNS) -> None:
    srv, ca_pem, sni = tls
    dns.records["img.test"] = ["127.0.0.1"]
    dns.records["other.test"] = ["127.0.0.1"]
    port = srv.server_address[1]
    opts = _options(retries=0)
    fetcher = Fetcher(opts, ssl_context=ssl.create_default_context(cadata=ca_pem))
    _open_fetchers.append(fetcher)
    result = fetcher.fetch(f"https://img.test:{port}/ok")
    assert result.reason is None and result.body == IMAGE
    assert "img.test" in sni
    # Same IP, wrong name: the certificate check must still be against the URL's host.
    wrong = fetcher.fetch(f"https://other.test:{port}/ok")
    assert wrong.reason == reasons.DOWNLOAD_CONNECTION_ERROR
    assert "certificate" in (wrong.error_message or "")
    # Untrusted CA (the default store does not know our test CA).
    plain = Fetcher(opts)
    _open_fetchers.append(plain)
    untrusted = plain.fetch(f"https://img.test:{port}/ok")
    assert untrusted.reason == reasons.DOWNLOAD_CONNECTION_ERROR and untrusted.attempts == 1
    fetcher.close()


# ---------------------------------------------------------------------------------------------------------
# Exact bodies
# ---------------------------------------------------------------------------------------------------------


def test_body_shorter_than_content_length_is_transient(base: str) -> None:
    # /stall?s=0: claims 1000 bytes, sends 10, hangs up at once.
    result = _fetcher(retries=1).fetch(f"{base}/stall?s=0")
    assert result.reason == reasons.DOWNLOAD_TRUNCATED and result.transient
    assert result.body is None and result.attempts == 2  # retried in line, like a reset
    assert "10 of 1000" in (result.error_message or "")


@pytest.mark.parametrize("late", [False, True])
def test_overlong_response_never_reaches_the_next_url(server: _Server, base: str, late: bool) -> None:
    fetcher = _fetcher(retries=0)
    key = f"over-{late}"
    first = fetcher.fetch(f"{base}/over?key={key}" + ("&late=1" if late else ""))
    # Extra bytes that arrive with the body make the response unparseable (a protocol error); when they
    # come after it, the declared body was whole. Either way the connection is not used again.
    assert (first.reason, first.body) in ((None, IMAGE), (reasons.DOWNLOAD_HTTP_ERROR, None))
    if late:
        assert first.reason is None
        time.sleep(0.2)  # the extra bytes reach the idle connection
    after = [fetcher.fetch(f"{base}/ok?key={key}-next") for _ in range(2)]
    assert all(r.reason is None and r.body == IMAGE for r in after)
    # The next URL went over a new connection, never the one that overran.
    assert not set(server.peers[f"{key}-next"]) & set(server.peers[key])


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_either_event_loop_keeps_the_guarantees(server: _Server, base: str, kind: str) -> None:
    # uvloop is the default (less CPU a URL); asyncio's own loop stays the fallback: both give the same answers.
    import uvloop

    fetcher = _fetcher(event_loop=kind, retries=0, read_timeout_s=0.5)
    assert fetcher.fetch(f"{base}/ok").body == IMAGE
    assert isinstance(fetcher._loop, uvloop.Loop) == (kind == "uvloop")
    assert fetcher.fetch(f"{base}/stall?s=0").reason == reasons.DOWNLOAD_TRUNCATED
    assert fetcher.fetch(f"{base}/stall?s=2").reason == reasons.DOWNLOAD_TIMEOUT
    first = fetcher.fetch(f"{base}/over?key=loop-{kind}")
    assert (first.reason, first.body) in ((None, IMAGE), (reasons.DOWNLOAD_HTTP_ERROR, None))
    assert fetcher.fetch(f"{base}/ok?key=loop-{kind}-next").body == IMAGE
    assert not set(server.peers[f"loop-{kind}-next"]) & set(server.peers[f"loop-{kind}"])


# ---------------------------------------------------------------------------------------------------------
# Opt-outs: robots.txt, X-Robots-Tag noml, TDMRep
# ---------------------------------------------------------------------------------------------------------


def test_robots_txt_fetched_once_per_host_and_honoured(server: _Server, dns: FakeDNS) -> None:
    dns.records["robots-a.test"] = ["127.0.0.1"]
    port = server.server_address[1]
    fetcher = _fetcher()
    urls = [(f"ok{i}", f"http://robots-a.test:{port}/ok?key=ra{i}") for i in range(4)]
    urls += [(f"private{i}", f"http://robots-a.test:{port}/private/x?key=rp{i}") for i in range(4)]
    results = dict(fetcher.fetch_many(urls))
    # The altsieve group (which allows /ok) wins over "*" (which disallows everything).
    assert all(results[f"ok{i}"].reason is None for i in range(4))
    for i in range(4):
        refused = results[f"private{i}"]
        assert refused.reason == reasons.DOWNLOAD_ROBOTS_TXT and refused.optout == "robots.txt"
        assert not refused.transient and refused.body is None
        assert f"rp{i}" not in server.peers  # never requested
    assert server.counters["robots:robots-a.test"] == 1
    assert fetcher.stats()["robots_fetches"] == 1


@pytest.mark.parametrize(
    ("host", "path", "refused"),
    [("robots-b.test", "/ok", True),  # a group for img2dataset, one of our agent names
     ("robots-c.test", "/ok", True),  # "*" applies when no group names us
     ("robots-c.test", "/host", False)],
)
def test_robots_txt_groups(server: _Server, dns: FakeDNS, host: str, path: str, refused: bool) -> None:
    dns.records[host] = ["127.0.0.1"]
    url = f"http://{host}:{server.server_address[1]}{path}"
    result = _fetcher().fetch(url)
    assert (result.reason == reasons.DOWNLOAD_ROBOTS_TXT) is refused
    assert _fetcher(respect_robots_txt=False).fetch(url).reason is None


def test_unreachable_robots_txt_is_transient(server: _Server, dns: FakeDNS) -> None:
    dns.records["robots-down.test"] = ["127.0.0.1"]
    result = _fetcher(retries=0).fetch(f"http://robots-down.test:{server.server_address[1]}/ok")
    # RFC 9309: a robots.txt that fails with a server error means "disallow for now", not "allow".
    assert result.reason == reasons.DOWNLOAD_SERVER_ERROR and result.transient
    assert result.error_message == "robots.txt: HTTP 503"


def test_x_robots_tag_noml(base: str) -> None:
    result = _fetcher().fetch(f"{base}/robots?v=noml")
    assert result.reason == reasons.DOWNLOAD_ROBOTS_OPTOUT and result.optout == "x-robots-tag"


@pytest.mark.parametrize(("value", "reserved"), [("1", True), ("0", False)])
def test_tdm_reservation_header(base: str, value: str, reserved: bool) -> None:
    result = _fetcher().fetch(f"{base}/tdm?v={value}")
    assert (result.reason == reasons.DOWNLOAD_TDM_RESERVED) is reserved
    assert result.optout == ("tdm-reservation" if reserved else None)
    assert _fetcher(respect_tdmrep=False).fetch(f"{base}/tdm?v={value}").reason is None


def test_tdmrep_json(server: _Server, dns: FakeDNS) -> None:
    dns.records["tdm-a.test"] = ["127.0.0.1"]
    port = server.server_address[1]
    fetcher = _fetcher()
    reserved = fetcher.fetch(f"http://tdm-a.test:{port}/big?key=tdm-big")
    assert reserved.reason == reasons.DOWNLOAD_TDM_RESERVED and reserved.optout == "tdmrep.json"
    assert "tdm-big" not in server.peers  # the file refused it before any request
    assert fetcher.fetch(f"http://tdm-a.test:{port}/ok").reason is None  # the second rule: not reserved
    assert server.counters["tdmrep:tdm-a.test"] == 1
    assert _fetcher(respect_tdmrep=False).fetch(f"http://tdm-a.test:{port}/big").reason is None


# ---------------------------------------------------------------------------------------------------------
# Stalls, the circuit breaker and politeness per host
# ---------------------------------------------------------------------------------------------------------


def test_stalled_host_trips_the_breaker_without_holding_other_hosts(server: _Server, dns: FakeDNS) -> None:
    dns.records["stalled.test"] = ["127.0.0.1"]
    dns.records["healthy.test"] = ["127.0.0.1"]
    port = server.server_address[1]
    fetcher = _fetcher(read_timeout_s=0.4, idle_timeout_s=0.4, retries=0, concurrency=16, per_host_concurrency=2,
                       breaker_failures=3, breaker_cooldown_s=30, per_host_requests_per_s=None)
    urls = []
    for i in range(20):  # interleaved, as a URL list mixes hosts
        urls.append((f"stall{i}", f"http://stalled.test:{port}/stall?s=3&key=st{i}"))
        urls.append((f"ok{i}", f"http://healthy.test:{port}/slow?d=0.02&key=ok{i}"))
    started = time.monotonic()
    results = dict(fetcher.fetch_many(urls))
    elapsed = time.monotonic() - started
    stalled = [results[f"stall{i}"] for i in range(20)]
    timeouts = sum(r.reason == reasons.DOWNLOAD_TIMEOUT for r in stalled)
    fast_fails = [r for r in stalled if r.reason == reasons.DOWNLOAD_HOST_UNAVAILABLE]
    assert timeouts >= 3 and len(fast_fails) >= 14 and timeouts + len(fast_fails) == 20
    assert all(r.transient and r.attempts == 1 and r.elapsed_s < 2 for r in fast_fails)
    # Without the breaker: 20 stalls / 2 connections x 0.4 s = 4 s at least.
    assert elapsed < 3.0
    healthy = [results[f"ok{i}"] for i in range(20)]
    assert all(r.reason is None for r in healthy)
    assert max(r.elapsed_s for r in healthy) < 1.5  # never queued behind the stalled host
    assert fetcher.stats()["breaker_trips"] == 1


@pytest.mark.parametrize("release_s", [0.2, None])
def test_a_stalled_body_gives_its_host_slot_back(base: str, release_s: float | None) -> None:
    # One connection to the host: the stall holds it until its idle timeout unless it gives it back.
    fetcher = _fetcher(read_timeout_s=5, idle_timeout_s=1.0, retries=0, concurrency=8, per_host_concurrency=1,
                       stall_release_s=release_s)
    urls = [("stall", f"{base}/stall?s=3&key=release{release_s}")]
    urls += [(f"ok{i}", f"{base}/slow?d=0.05&key=release{release_s}-{i}") for i in range(2)]
    results = dict(fetcher.fetch_many(urls))
    assert results["stall"].reason == reasons.DOWNLOAD_TIMEOUT
    assert all(results[f"ok{i}"].reason is None for i in range(2))
    slowest = max(results[f"ok{i}"].elapsed_s for i in range(2))
    if release_s is None:
        assert slowest >= 1.0  # queued behind the stall's whole idle timeout
    else:
        assert slowest < 0.8  # the stall gave the slot back after 0.2 s of silence


def test_stalls_give_back_at_most_the_hosts_share_of_slots(base: str) -> None:
    fetcher = _fetcher(read_timeout_s=5, idle_timeout_s=1.0, retries=0, concurrency=8, per_host_concurrency=1,
                       stall_release_s=0.2)
    # The first stall gives its slot to the second; the second may not (one released connection per slot at
    # most), so the fast URLs wait for it: at 1.2 s, not at 0.45 s (unbounded) nor 2.0 s (no release).
    urls = [(f"stall{i}", f"{base}/stall?s=3&key=share{i}") for i in range(2)]
    urls += [(f"ok{i}", f"{base}/slow?d=0.05&key=share-ok{i}") for i in range(2)]
    results = dict(fetcher.fetch_many(urls))
    assert [results[f"stall{i}"].reason for i in range(2)] == [reasons.DOWNLOAD_TIMEOUT] * 2
    slowest = max(results[f"ok{i}"].elapsed_s for i in range(2))
    assert 1.0 < slowest < 1.8


def test_timeouts_are_left_for_retry_failed(base: str) -> None:
    result = _fetcher(read_timeout_s=0.3, retries=2).fetch(f"{base}/stall?s=1")
    assert result.reason == reasons.DOWNLOAD_TIMEOUT and result.transient and result.attempts == 1


def test_idle_body_ends_before_the_read_timeout(base: str) -> None:
    result = _fetcher(read_timeout_s=5, idle_timeout_s=0.3, retries=0).fetch(f"{base}/stall?s=3")
    assert result.reason == reasons.DOWNLOAD_TIMEOUT
    assert result.elapsed_s < 1.5 and "no data for 0.3 s" in (result.error_message or "")


def test_429_pauses_the_whole_host(base: str, server: _Server, dns: FakeDNS) -> None:
    dns.records["other.test"] = ["127.0.0.1"]
    fetcher = _fetcher(retries=0, per_host_requests_per_s=None)
    limited = fetcher.fetch(f"{base}/flaky?key=pause429&status=429&n=1&ra=1")
    assert limited.reason == reasons.DOWNLOAD_RATE_LIMITED
    same_host = fetcher.submit(f"{base}/ok")
    other_host = fetcher.submit(f"http://other.test:{server.server_address[1]}/ok")
    assert other_host.result().elapsed_s < 0.5  # another host is not paused
    assert same_host.result().reason is None and same_host.result().elapsed_s >= 0.7


def test_a_host_that_keeps_up_gets_more_connections_up_to_its_cap(server: _Server, base: str) -> None:
    server.max_active = 0
    fetcher = _fetcher(concurrency=32, per_host_concurrency=2, per_host_concurrency_max=6)
    results = dict(fetcher.fetch_many((i, f"{base}/slow?d=0.15&key=grow{i}") for i in range(48)))
    assert all(r.reason is None for r in results.values())
    assert server.max_active == 6  # grew from 2 while its URLs queued, and never past the cap


def test_refused_connections_halve_the_cap_and_still_trip_the_breaker(dns: FakeDNS) -> None:
    with socket.socket() as closed:  # a port nobody listens on: every connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    dns.records["refusing.test"] = ["127.0.0.1"]
    fetcher = _fetcher(retries=0, concurrency=8, per_host_concurrency=2, breaker_failures=3, breaker_cooldown_s=30,
                       respect_robots_txt=False, respect_tdmrep=False)
    results = [r for _, r in fetcher.fetch_many((i, f"http://refusing.test:{port}/x{i}") for i in range(10))]
    reasons_seen = [r.reason for r in results]
    assert reasons_seen.count(reasons.DOWNLOAD_CONNECTION_ERROR) == 3
    assert reasons_seen.count(reasons.DOWNLOAD_HOST_UNAVAILABLE) == 7
    # The first refusal halves 2 to 1; the second was sent with it (no second cut); at 1 the third cuts nothing.
    assert fetcher.stats()["breaker_trips"] == 1 and fetcher.stats()["host_cap_cuts"] == 1


def test_a_503_halves_the_hosts_connections(server: _Server, base: str) -> None:
    fetcher = _fetcher(retries=0, concurrency=16, per_host_concurrency=4, per_host_concurrency_max=4)
    assert fetcher.fetch(f"{base}/status/503?key=cut503").reason == reasons.DOWNLOAD_SERVER_ERROR
    server.max_active = 0
    started = time.monotonic()
    results = list(fetcher.fetch_many((i, f"{base}/slow?d=0.3&key=cut{i}") for i in range(4)))
    assert all(r.reason is None for _, r in results)
    assert server.max_active == 2 and time.monotonic() - started >= 0.55  # two at a time, not four
    assert fetcher.stats()["host_cap_cuts"] == 1


def test_a_host_that_takes_four_at_once_meets_few_refusals(server: _Server, base: str) -> None:
    fetcher = _fetcher(retries=0, concurrency=64, per_host_concurrency=16, per_host_concurrency_max=64,
                       respect_robots_txt=False, respect_tdmrep=False)
    results = [r for _, r in fetcher.fetch_many((i, f"{base}/capacity?n=4&d=0.05&key=four") for i in range(80))]
    refused = server.counters.get("four:503", 0)
    assert refused == sum(r.reason == reasons.DOWNLOAD_SERVER_ERROR for r in results)
    assert refused + sum(r.reason is None for r in results) == 80
    # With the cap never cut, 62 of the 80 were turned away here. Halved on each round of 503s, then grown by one
    # a round, it settles near the 4 the host takes: 21-22.
    assert refused < 30 and fetcher.stats()["host_cap_cuts"] >= 2


def test_request_rate_per_host(base: str) -> None:
    fetcher = _fetcher(per_host_requests_per_s=20, per_host_burst=1)
    started = time.monotonic()
    results = list(fetcher.fetch_many((i, f"{base}/ok?key=rate{i}") for i in range(8)))
    assert all(r.reason is None for _, r in results)
    # robots.txt, tdmrep.json and 8 images: 10 requests, one per 50 ms after the first.
    assert time.monotonic() - started >= 0.4


def test_unexpected_error_is_transient_and_counted_apart(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from altsieve.transforms.fetch import Fetcher as FetcherClass

    async def broken(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the fetcher")

    monkeypatch.setattr(FetcherClass, "_consume", broken)
    result = _fetcher().fetch(f"{base}/ok")
    assert result.reason == reasons.DOWNLOAD_UNEXPECTED_ERROR and result.transient
    assert "RuntimeError: a bug in the fetcher" in (result.error_message or "")
    assert reasons.DOWNLOAD_UNEXPECTED_ERROR != reasons.DOWNLOAD_HTTP_ERROR


# ---------------------------------------------------------------------------------------------------------
# DNS cache
# ---------------------------------------------------------------------------------------------------------


def test_dns_cache_honours_ttls() -> None:
    import asyncio

    from altsieve.transforms.addresses import AddressBlocked, DnsCache, LookupFailed

    now = [1000.0]
    queries: list[str] = []
    answers = {"short.test": (["93.184.216.34"], 30.0), "zero.test": (["93.184.216.35"], 0.0),
               "long.test": (["93.184.216.36"], 10**6), "inside.test": (["10.0.0.1"], 300.0)}

    async def lookup(host: str):
        queries.append(host)
        await asyncio.sleep(0.01)
        if host == "missing.test":
            raise LookupFailed("DNS: Domain name not found", retryable=False)
        if host == "flaky.test":
            raise LookupFailed("DNS: Timeout", retryable=True)
        ips, ttl = answers[host]
        return [(socket.AF_INET, ip) for ip in ips], ttl

    async def scenario() -> None:
        cache = DnsCache(lookup, parse_networks([]), min_ttl_s=5, max_ttl_s=3600, negative_ttl_s=60,
                         clock=lambda: now[0])
        # Concurrent lookups of one name wait for one query.
        got = await asyncio.gather(*(cache.resolve("short.test") for _ in range(5)))
        assert got == [[(socket.AF_INET, "93.184.216.34")]] * 5 and queries == ["short.test"]
        now[0] += 29
        await cache.resolve("short.test")
        assert queries.count("short.test") == 1  # within its TTL
        now[0] += 2
        await cache.resolve("short.test")
        assert queries.count("short.test") == 2  # TTL over: asked again
        await cache.resolve("zero.test")
        now[0] += 4
        await cache.resolve("zero.test")
        assert queries.count("zero.test") == 1  # TTL 0 is held for the 5 s minimum
        await cache.resolve("long.test")
        now[0] += 3601
        await cache.resolve("long.test")
        assert queries.count("long.test") == 2  # and a huge TTL for the 1 h maximum
        for _ in range(2):  # a blocked answer is an answer: cached
            with pytest.raises(AddressBlocked, match="10.0.0.1 is private"):
                await cache.resolve("inside.test")
        assert queries.count("inside.test") == 1
        for _ in range(2):  # no such name: cached for negative_ttl_s
            with pytest.raises(LookupFailed):
                await cache.resolve("missing.test")
        assert queries.count("missing.test") == 1
        for _ in range(2):  # "try again later": not cached
            with pytest.raises(LookupFailed):
                await cache.resolve("flaky.test")
        assert queries.count("flaky.test") == 2

    asyncio.run(scenario())


def test_c_ares_resolver_reaches_localhost(server: _Server) -> None:
    # c-ares answers "localhost" itself (RFC 6761 and /etc/hosts): no query leaves the machine.
    fetcher = _fetcher(dns_resolver="c-ares", allow_private_addresses=["127.0.0.0/8", "::1/128"])
    result = fetcher.fetch(f"http://localhost:{server.server_address[1]}/ok")
    assert result.reason is None and result.body == IMAGE
    assert fetcher.stats()["dns_lookups"] == 1
