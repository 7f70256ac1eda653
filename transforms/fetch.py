"""HTTP(S) image fetcher: SSRF-safe, retrying, deadline-bounded, with bounded concurrency.

Plain Python (no Beam) so that it can be tested and benchmarked on its own; the download DoFn wraps a
:class:`Fetcher` created in ``setup()``.

Safety model
------------
* Only ``http``/``https`` URLs are fetched.
* We resolve DNS ourselves and check *every* address a name resolves to (a name that resolves to one
  public and one private address is refused: an attacker controls which one a resolver returns first).
  The connection is then made to exactly one of those validated addresses, so no second resolution can
  swap in another address (DNS rebinding). ``Host``, SNI and certificate checks still use the URL's name.
* Every redirect hop goes through the same check before any packet is sent to it.

Time model
----------
* Connecting (TCP to each validated address in turn, plus the TLS handshake) takes at most
  ``connect_timeout_s`` in total.
* After the request is sent, the whole response (status line, headers and body) must arrive within
  ``read_timeout_s``. This is both an idle limit per ``recv`` and a hard deadline, so a server that drips
  one byte a second cannot hold a thread for longer than ``read_timeout_s``.
* One attempt, including all of its redirect hops, gets a budget of ``connect_timeout_s + read_timeout_s``;
  later hops get whatever is left. Time spent waiting for our own per-host slot is not charged.
* DNS uses the system resolver and its own timeout (``getaddrinfo`` cannot be given one); its time is
  charged to the budget but a slow resolver can overrun it.
* Between attempts we sleep: ``Retry-After`` (429/503) capped at ``retry_after_max_s``, otherwise full
  jitter ``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``. Sleeps do not hold a per-host slot.

Concurrency and reuse
---------------------
* ``per_host_concurrency`` bounds simultaneous requests per host name (each redirect hop counts against
  its own host), for ``fetch`` and ``fetch_many`` alike.
* Idle keep-alive connections are shared by all threads (at most ``per_host_concurrency`` per host and
  ``2 * concurrency`` in total, closed after 10 s idle); a pooled connection the server has meanwhile
  closed is replaced transparently without spending an attempt.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import email.utils
import http.client
import io
import ipaddress
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote, urljoin, urlsplit

from altsieve import __version__
from altsieve.core import reasons

logger = logging.getLogger(__name__)

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_USER_AGENT = f"altsieve/{__version__} (+https://github.com/altsieve/altsieve; image-text dataset curation)"

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ALLOWED_SCHEMES = {"http": 80, "https": 443}
_CHUNK = 64 * 1024
# Error and redirect bodies up to this size are read and discarded so the connection can be reused;
# larger ones are cheaper to abandon with the connection.
_DRAIN_MAX = 64 * 1024
# Idle keep-alive connections older than this are closed rather than reused: many servers drop idle
# connections after 5-15 s, and a stale one costs a failed send before we notice.
_POOL_IDLE_S = 10.0
# Characters left as-is when re-quoting paths; everything else (spaces, non-ASCII, control characters) is
# percent-encoded, which both rescues sloppy web URLs and makes header injection via the path impossible.
_PATH_SAFE = "!$%&'()*+,/:;=@[]~-._"
_QUERY_SAFE = _PATH_SAFE + "?"
_HOST_RE = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?$")
_ROBOTS_OPTOUT_DIRECTIVES = frozenset({"noai", "noimageai"})
# X-Robots-Tag directives that carry a value after a colon, so "name: value" is not an agent prefix.
_ROBOTS_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_ROBOTS_AGENT_RE = re.compile(r"^[a-z0-9_.*-]+$")
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


# --------------------------------------------------------------------------------------------------------
# Options and results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchOptions:
    """Knobs of :class:`Fetcher`; every default is safe for crawling the public web."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    retries: int = 2  # extra attempts for transient failures (timeouts, connection reset, 429, 5xx)
    backoff_base_s: float = 0.5  # exponential backoff with full jitter: uniform(0, base * 2**attempt), capped
    backoff_max_s: float = 10.0
    retry_after_max_s: float = 30.0  # honour Retry-After (seconds or HTTP-date) on 429/503, capped at this
    max_redirects: int = 5
    max_bytes: int = 20_000_000
    user_agent: str = DEFAULT_USER_AGENT
    respect_robots_optout: bool = True  # X-Robots-Tag noai / noimageai, plain or "agent: noai" for us or "*"
    robots_agent_names: tuple[str, ...] = ("altsieve", "img2dataset")
    allowed_private_networks: tuple[str, ...] = ()  # CIDRs the user allows, e.g. ("127.0.0.0/8",)
    concurrency: int = 32  # threads per worker process
    per_host_concurrency: int = 16

    def __post_init__(self) -> None:
        # Why: options often come from CLI/YAML as lists; frozen dataclasses need tuples to stay hashable.
        object.__setattr__(self, "robots_agent_names", tuple(self.robots_agent_names))
        object.__setattr__(self, "allowed_private_networks", tuple(self.allowed_private_networks))
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.retries < 0 or self.max_redirects < 0:
            raise ValueError("retries and max_redirects must be >= 0")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.retry_after_max_s < 0:
            raise ValueError("backoff and retry-after limits must be >= 0")
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self.concurrency < 1 or self.per_host_concurrency < 1:
            raise ValueError("concurrency and per_host_concurrency must be >= 1")
        parse_networks(self.allowed_private_networks)  # fail at configuration time, not per URL


@dataclass
class FetchResult:
    """Outcome of one :meth:`Fetcher.fetch`; ``reason is None`` means ``body`` holds the response."""

    url: str
    final_url: str | None  # last URL requested (after redirects); None when the URL was never requested
    status_code: int | None  # last HTTP status seen, None when no response arrived
    content_type: str | None  # media type only, lower-cased, e.g. "image/jpeg" (parameters dropped)
    body: bytes | None  # only set on success
    reason: str | None  # None on success, else a reasons.* download/url code
    error_message: str | None  # short human text: "HTTP 404", "read timeout after 2.0 s"
    attempts: int  # HTTP attempts made (redirect hops within an attempt do not count)
    elapsed_s: float  # wall time including backoff sleeps

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def transient(self) -> bool:
        return self.reason in reasons.TRANSIENT


class _Failure(Exception):
    """Internal: a classified failure of one hop, carried up to the retry loop."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.content_type = content_type
        self.target: _Target | None = None  # where a retry should resume (the hop that failed)
        self.url: str | None = None  # the URL that failed, reported as final_url
        self.redirects = 0  # redirects followed before the failure, so a retry keeps counting


# --------------------------------------------------------------------------------------------------------
# Pure helpers (no network): address policy, X-Robots-Tag, Retry-After, URL parsing
# --------------------------------------------------------------------------------------------------------


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings; raises ValueError on a malformed one."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _non_public_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None if it is."""
    # Why explicit checks besides is_global: is_global is True for multicast (224.0.0.1, ff02::1) and for
    # deprecated site-local fec0::/10, which must not be reachable either.
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that traffic to ``ip`` may end up at (6to4, Teredo, IPv4-compatible)."""
    out: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in _IPV4_COMPATIBLE:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def blocked_reason(address: str | IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Short text saying why ``address`` must not be contacted, or None if it may be.

    ``allowed`` holds networks the user explicitly opened (e.g. 127.0.0.0/8 for tests or an intranet).
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            # Why: a dual-stack socket sends ::ffff:a.b.c.d to the IPv4 host a.b.c.d, so judge that.
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            # Why: a NAT64 gateway forwards to the embedded IPv4; on IPv6-only hosts with DNS64 every
            # IPv4 site looks like this, so judge the embedded address instead of blocking them all.
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if _in_networks(ip, allowed):
        return None
    kind = _non_public_kind(ip)
    if kind is not None:
        return f"{ip} is {kind}"
    if isinstance(ip, ipaddress.IPv6Address):
        for v4 in _embedded_ipv4(ip):
            if not _in_networks(v4, allowed) and (kind := _non_public_kind(v4)) is not None:
                return f"{ip} embeds {kind} {v4}"
    return None


def is_blocked_address(address: str | IPAddress, allowed: Sequence[IPNetwork] = ()) -> bool:
    """True when ``address`` is private/loopback/link-local/multicast/reserved/unspecified and not allowed."""
    return blocked_reason(address, allowed) is not None


def robots_optout(header_values: Iterable[str], agent_names: Iterable[str]) -> str | None:
    """The X-Robots-Tag directive that opts this crawler out of AI use, or None.

    Follows Google's X-Robots-Tag grammar: comma-separated directives, optionally preceded by
    ``agent:`` which scopes the following directives (until the next agent prefix) to that agent.
    Unscoped directives and ``*`` apply to everyone; ``otherbot: noai`` does not apply to us.
    """
    names = {n.lower() for n in agent_names} | {"*"}
    for value in header_values:
        agent: str | None = None
        for raw in value.split(","):
            part = raw.strip()
            if not part:
                continue
            head, sep, rest = part.partition(":")
            head = head.strip().lower()
            if sep and head not in _ROBOTS_VALUED_DIRECTIVES and _ROBOTS_AGENT_RE.match(head):
                agent = head
                directive = rest.strip().lower()
            else:
                directive = part.lower()
            if directive in _ROBOTS_OPTOUT_DIRECTIVES and (agent is None or agent in names):
                return part
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if absent/garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class _Target:
    """A validated, normalised request target."""

    scheme: str
    host: str  # ASCII (IDNA) host, no brackets for IPv6
    port: int
    request_target: str  # path + query, percent-encoded
    url: str  # normalised URL string

    @property
    def pool_key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def _idna(host: str) -> str:
    try:
        import idna  # type: ignore[import-untyped]

        return idna.encode(host, uts46=True).decode("ascii")
    except ImportError:
        return host.encode("idna").decode("ascii")


def _parse_target(url: str) -> _Target:
    """Validate and normalise ``url``; raises _Failure with a url_* reason."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _ALLOWED_SCHEMES:
            raise _Failure(reasons.URL_SCHEME_NOT_ALLOWED, f"scheme {scheme or '(none)'!r} not allowed")
        hostname = parts.hostname
        port = parts.port or _ALLOWED_SCHEMES[scheme]
    except ValueError as exc:  # bad port, unbalanced brackets, ...
        raise _Failure(reasons.URL_INVALID, f"invalid URL: {exc}") from None
    if not hostname:
        raise _Failure(reasons.URL_INVALID, "invalid URL: no host")
    try:
        ip = ipaddress.ip_address(hostname)
        host = str(ip)
    except ValueError:
        try:
            host = _idna(hostname.rstrip(".")).lower() if not hostname.isascii() else hostname.lower()
        except Exception:  # idna raises its own error types; any of them means an unusable name
            raise _Failure(reasons.URL_INVALID, f"invalid host {hostname!r}") from None
        if not _HOST_RE.match(host):
            raise _Failure(reasons.URL_INVALID, f"invalid host {hostname!r}") from None
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if not path.startswith("/"):
        path = "/" + path
    request_target = path + ("?" + quote(parts.query, safe=_QUERY_SAFE) if parts.query else "")
    netloc_host = f"[{host}]" if ":" in host else host
    netloc = netloc_host if port == _ALLOWED_SCHEMES[scheme] else f"{netloc_host}:{port}"
    return _Target(scheme, host, port, request_target, f"{scheme}://{netloc}{request_target}")


# --------------------------------------------------------------------------------------------------------
# Sockets and connections
# --------------------------------------------------------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """Raw stream over a socket whose every read is bounded by the owner's idle limit and deadline."""

    def __init__(self, owner: _DeadlineSocket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._owner.arm()
        n = self._owner.sock.recv_into(buffer)
        if _QUICKACK is not None:
            # Why: servers that leave Nagle on write headers and body separately; on a keep-alive
            # connection the body then waits for our delayed ACK (~40 ms per response). Measured on a
            # stock ThreadingHTTPServer: 360 -> 3,600 responses/s with this one syscall per recv.
            with contextlib.suppress(OSError):
                self._owner.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return n

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._owner.release_reader()


class _DeadlineSocket:
    """Socket wrapper for http.client: per-recv idle timeout plus one absolute deadline per request.

    http.client only knows per-call socket timeouts, which a slow-drip server defeats; re-arming the
    timeout to ``min(idle, deadline - now)`` before each recv turns it into a hard deadline.
    Like socket.socket, the real close waits until readers made by makefile() are closed: http.client
    closes the connection as soon as it sees a close-delimited response, then reads the body.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = float("inf")
        self.idle_s = 10.0
        self._readers = 0
        self._closed = False
        self._lock = threading.Lock()

    def arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("response deadline exceeded")
        self.sock.settimeout(min(self.idle_s, remaining))

    def sendall(self, data: bytes) -> None:
        self.arm()
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError("only 'rb' is supported")
        with self._lock:
            self._readers += 1
        return io.BufferedReader(_DeadlineReader(self), _CHUNK)

    def release_reader(self) -> None:
        with self._lock:
            self._readers -= 1
            really = self._closed and self._readers <= 0
        if really:
            self.sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            really = self._readers <= 0
        if really:
            self.sock.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


class _PinnedConnection(http.client.HTTPConnection):
    """HTTPConnection that only ever talks over a socket the Fetcher opened to a validated address.

    ``host`` stays the URL's host so the Host header is right; the socket is injected, and connect() is
    disabled so http.client can never resolve and connect on its own (which would bypass the check).
    """

    def __init__(self, target: _Target, sock: _DeadlineSocket) -> None:
        super().__init__(target.host, target.port)
        self.default_port = _ALLOWED_SCHEMES[target.scheme]  # omit ":443" from Host for https
        self.auto_open = 0
        self.sock = sock
        self.idle_since = 0.0

    def connect(self) -> None:
        raise http.client.NotConnected("pinned connection has no socket")


def _open_socket(family: int, sockaddr: tuple, timeout: float) -> socket.socket:
    """Open a TCP socket to exactly ``sockaddr`` (no name resolution)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class _ConnectionPool:
    """Idle keep-alive connections shared by all threads, keyed by (scheme, host, port)."""

    def __init__(self, max_per_key: int, max_total: int) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int], list[_PinnedConnection]] = {}
        self._total = 0
        self._max_per_key = max_per_key
        self._max_total = max_total

    def get(self, key: tuple[str, str, int]) -> _PinnedConnection | None:
        stale: list[_PinnedConnection] = []
        found: _PinnedConnection | None = None
        now = time.monotonic()
        with self._lock:
            conns = self._idle.get(key)
            while conns:
                conn = conns.pop()  # most recently used first: least likely to be closed by the server
                self._total -= 1
                if now - conn.idle_since < _POOL_IDLE_S:
                    found = conn
                    break
                stale.append(conn)
            if conns is not None and not conns:
                del self._idle[key]
        for conn in stale:
            conn.close()
        return found

    def put(self, key: tuple[str, str, int], conn: _PinnedConnection) -> None:
        conn.idle_since = time.monotonic()
        evicted: list[_PinnedConnection] = []
        with self._lock:
            if self._total >= self._max_total:
                evicted.extend(self._sweep_locked(conn.idle_since))
            conns = self._idle.setdefault(key, [])
            if len(conns) < self._max_per_key and self._total < self._max_total:
                conns.append(conn)
                self._total += 1
            else:
                evicted.append(conn)
                if not conns:
                    del self._idle[key]
        for c in evicted:
            c.close()

    def _sweep_locked(self, now: float) -> list[_PinnedConnection]:
        out: list[_PinnedConnection] = []
        for key in list(self._idle):
            keep = [c for c in self._idle[key] if now - c.idle_since < _POOL_IDLE_S]
            out.extend(c for c in self._idle[key] if now - c.idle_since >= _POOL_IDLE_S)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        self._total -= len(out)
        return out

    def close(self) -> None:
        with self._lock:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
            self._total = 0
        for c in conns:
            c.close()


class _HostLimiter:
    """Per-host semaphores, created on demand and dropped when unused (millions of hosts must not leak)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._entries: dict[str, list] = {}  # host -> [semaphore, users]

    def acquire(self, host: str) -> threading.Semaphore:
        with self._lock:
            entry = self._entries.get(host)
            if entry is None:
                entry = self._entries[host] = [threading.Semaphore(self._limit), 0]
            entry[1] += 1
        sem: threading.Semaphore = entry[0]
        sem.acquire()
        return sem

    def release(self, host: str) -> None:
        with self._lock:
            entry = self._entries[host]
            entry[0].release()
            entry[1] -= 1
            if entry[1] == 0:
                del self._entries[host]


# --------------------------------------------------------------------------------------------------------
# Fetcher
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Response:
    """A hop's outcome that is not an error: a success body or a redirect location."""

    status: int
    content_type: str | None
    body: bytes | None = None
    location: str | None = None


def _abandon(conn: _PinnedConnection, resp: http.client.HTTPResponse) -> None:
    """Drop a connection whose response will not be read to the end (the response owns the socket too)."""
    resp.close()
    conn.close()


def _media_type(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def _default_ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    try:
        import certifi

        # Why: slim container images often lack a system CA bundle; certifi's is added, not substituted.
        ctx.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    return ctx


class Fetcher:
    """Thread-safe downloader; one per worker process. ``fetch`` never raises for network problems."""

    def __init__(self, options: FetchOptions | None = None, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._options = options or FetchOptions()
        self._allowed = parse_networks(self._options.allowed_private_networks)
        self._ssl_context = ssl_context or _default_ssl_context()
        self._hosts = _HostLimiter(self._options.per_host_concurrency)
        self._pool = _ConnectionPool(self._options.per_host_concurrency, 2 * self._options.concurrency)
        self._executor: cf.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._headers = {
            "User-Agent": self._options.user_agent,
            "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
            "Accept-Encoding": "identity",  # images are already compressed; avoids decoding bombs
        }

    @property
    def options(self) -> FetchOptions:
        return self._options

    # ---- public API ------------------------------------------------------------------------------------

    def fetch(self, url: str) -> FetchResult:
        start = time.monotonic()
        opts = self._options
        attempts = 0
        final_url: str | None = None
        status: int | None = None
        try:
            if url is None or not str(url).strip():
                raise _Failure(reasons.URL_MISSING, "empty URL")
            target = _parse_target(str(url).strip())
            redirects = 0
            while True:
                attempts += 1
                try:
                    target, redirects, response = self._attempt(target, redirects)
                    return FetchResult(
                        url, target.url, response.status, response.content_type, response.body,
                        None, None, attempts, time.monotonic() - start,
                    )  # fmt: skip
                except _Failure as failure:
                    final_url = failure.url or final_url
                    status = failure.status if failure.status is not None else status
                    if not failure.retryable or attempts > opts.retries:
                        raise
                    self._sleep_before_retry(failure, attempts - 1)
                    # Why: resume where the chain failed, keeping the redirects already followed.
                    target = failure.target or target
                    redirects = failure.redirects
        except _Failure as failure:
            return FetchResult(
                url, failure.url or final_url, failure.status if failure.status is not None else status,
                failure.content_type, None, failure.reason, failure.message, attempts, time.monotonic() - start,
            )  # fmt: skip
        except Exception as exc:  # last resort: a weird server must not kill a bundle of a million URLs
            logger.warning("unexpected error fetching %s", url, exc_info=True)
            return FetchResult(
                url, final_url, status, None, None, reasons.DOWNLOAD_HTTP_ERROR,
                f"unexpected error: {type(exc).__name__}: {exc}"[:200], attempts, time.monotonic() - start,
            )  # fmt: skip

    def fetch_many(self, urls: Iterable[tuple[T, str]]) -> Iterator[tuple[T, FetchResult]]:
        """Fetch ``(key, url)`` pairs, yielding ``(key, result)`` in completion order.

        The input is pulled lazily: at most ``concurrency`` URLs are in flight or waiting to be yielded,
        so memory stays bounded for any input size. Abandoning the iterator cancels queued work.
        """
        executor = self._get_executor()
        source = iter(urls)
        pending: dict[cf.Future[FetchResult], T] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self._options.concurrency:
                    try:
                        key, url = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[executor.submit(self.fetch, url)] = key
                if not pending:
                    return
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop worker threads and close idle connections; the Fetcher stays usable (both are recreated)."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._pool.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------------------

    def _get_executor(self) -> cf.ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(self._options.concurrency, thread_name_prefix="altsieve-fetch")
            return self._executor

    def _sleep_before_retry(self, failure: _Failure, retry_index: int) -> None:
        opts = self._options
        if failure.retry_after is not None and failure.status in (429, 503):
            delay = min(failure.retry_after, opts.retry_after_max_s)
        else:
            delay = random.uniform(0.0, min(opts.backoff_max_s, opts.backoff_base_s * 2**retry_index))
        if delay > 0:
            time.sleep(delay)

    def _attempt(self, target: _Target, redirects: int) -> tuple[_Target, int, _Response]:
        """One attempt: follow redirects until a final response; raises _Failure with .target/.url set."""
        opts = self._options
        # Why a budget rather than a fixed deadline: time spent queueing on our own per-host semaphore is
        # not the server's fault and must not turn into a timeout.
        budget = opts.connect_timeout_s + opts.read_timeout_s
        while True:
            self._hosts.acquire(target.host)
            hop_start = time.monotonic()
            try:
                response = self._hop(target, hop_start + budget)
            except _Failure as failure:
                failure.target, failure.url, failure.redirects = target, target.url, redirects
                raise
            finally:
                self._hosts.release(target.host)
                budget -= time.monotonic() - hop_start
            if response.location is None:
                return target, redirects, response
            redirects += 1
            next_url = urljoin(target.url, response.location.strip())
            if redirects > opts.max_redirects:
                failure = _Failure(
                    reasons.DOWNLOAD_TOO_MANY_REDIRECTS, f"more than {opts.max_redirects} redirects",
                    status=response.status,
                )  # fmt: skip
                failure.url = next_url
                raise failure
            try:
                target = _parse_target(next_url)
            except _Failure as failure:
                failure.message = f"redirect to {next_url[:100]}: {failure.message}"
                failure.status = response.status
                failure.url = next_url
                raise

    def _hop(self, target: _Target, deadline: float) -> _Response:
        """One request/response on a pooled or fresh connection; raises _Failure."""
        conn = self._pool.get(target.pool_key)
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._connect(target, deadline)
            request_start = time.monotonic()
            try:
                return self._exchange(conn, target, deadline)
            except _Failure:
                raise
            except (ConnectionError, http.client.BadStatusLine, ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
                conn.close()
                if reused:
                    # Why: the server closed an idle keep-alive connection; that says nothing about the
                    # URL, so resend once on a fresh connection without spending an attempt (GET is safe).
                    reused, conn = False, None
                    continue
                raise self._classify(exc, "read", time.monotonic() - request_start) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise self._classify(exc, "read", time.monotonic() - request_start) from None
            except ValueError as exc:  # http.client.InvalidURL and friends
                conn.close()
                raise _Failure(reasons.URL_INVALID, f"invalid request: {exc}"[:200]) from None

    def _resolve(self, target: _Target) -> list[tuple[int, tuple]]:
        """All (family, sockaddr) for the host, after checking every one of them against the policy."""
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            # Why: EAI_AGAIN is the resolver saying "try later"; a name that does not exist will not
            # appear within a few seconds, so only the former is retried here.
            raise _Failure(
                reasons.DOWNLOAD_DNS_ERROR, f"DNS: {exc.strerror or exc}", retryable=exc.errno == socket.EAI_AGAIN
            ) from None
        except UnicodeError:
            raise _Failure(reasons.URL_INVALID, f"invalid host {target.host!r}") from None
        addresses: list[tuple[int, tuple]] = []
        seen: set[tuple] = set()
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6) or sockaddr in seen:
                continue
            seen.add(sockaddr)
            why = blocked_reason(ipaddress.ip_address(sockaddr[0]), self._allowed)
            if why is not None:
                # Why: refuse the whole host if any address is bad; we do not get to pick which one
                # a later resolution or a round-robin would have handed out.
                raise _Failure(reasons.DOWNLOAD_BLOCKED_ADDRESS, f"blocked address: {why}")
            addresses.append((family, sockaddr))
        if not addresses:
            raise _Failure(reasons.DOWNLOAD_DNS_ERROR, "DNS: no usable address")
        return addresses

    def _connect(self, target: _Target, deadline: float) -> _PinnedConnection:
        """Resolve, validate, and connect (plus TLS) within connect_timeout_s; raises _Failure."""
        addresses = self._resolve(target)
        start = time.monotonic()
        connect_deadline = min(start + self._options.connect_timeout_s, deadline)
        last: BaseException | None = None
        for family, sockaddr in addresses:
            remaining = connect_deadline - time.monotonic()
            if remaining <= 0:
                last = TimeoutError("connect deadline")
                break
            try:
                raw = _open_socket(family, sockaddr, remaining)
            except OSError as exc:
                last = exc
                continue
            try:
                sock: socket.socket = raw
                if target.scheme == "https":
                    raw.settimeout(max(0.001, connect_deadline - time.monotonic()))
                    sock = self._ssl_context.wrap_socket(raw, server_hostname=target.host)
            except OSError as exc:
                raw.close()
                raise self._classify(exc, "connect", time.monotonic() - start) from None
            return _PinnedConnection(target, _DeadlineSocket(sock))
        assert last is not None
        raise self._classify(last, "connect", time.monotonic() - start)

    def _exchange(self, conn: _PinnedConnection, target: _Target, deadline: float) -> _Response:
        """Send the GET and interpret the response. Returns the connection to the pool when reusable."""
        opts = self._options
        dsock: _DeadlineSocket = conn.sock  # type: ignore[assignment]
        dsock.idle_s = opts.read_timeout_s
        dsock.deadline = min(time.monotonic() + opts.read_timeout_s, deadline)
        conn.putrequest("GET", target.request_target, skip_accept_encoding=True)
        for name, value in self._headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        try:
            return self._consume(conn, resp, target)
        except BaseException:
            resp.close()  # a close-delimited response holds the socket open until it is closed
            raise

    def _consume(self, conn: _PinnedConnection, resp: http.client.HTTPResponse, target: _Target) -> _Response:
        """Interpret a response: redirect, error status, opt-out, or body (bounded by max_bytes)."""
        opts = self._options
        status = resp.status
        ctype = _media_type(resp.getheader("Content-Type"))

        if status in _REDIRECT_STATUSES:
            location = resp.getheader("Location")
            self._finish(conn, resp, target, drain=True)
            if not location:
                raise _Failure(reasons.DOWNLOAD_HTTP_ERROR, f"HTTP {status} without Location", status=status)
            return _Response(status, ctype, location=location)

        if not 200 <= status < 300:
            retry_after = parse_retry_after(resp.getheader("Retry-After"))
            self._finish(conn, resp, target, drain=True)
            msg = f"HTTP {status}"
            if status in (404, 410):
                raise _Failure(reasons.DOWNLOAD_NOT_FOUND, msg, status=status, content_type=ctype)
            if status == 429:
                raise _Failure(
                    reasons.DOWNLOAD_RATE_LIMITED, msg, retryable=True, status=status, retry_after=retry_after
                )
            if status >= 500:
                raise _Failure(
                    reasons.DOWNLOAD_SERVER_ERROR, msg, retryable=True, status=status, retry_after=retry_after
                )
            raise _Failure(reasons.DOWNLOAD_HTTP_ERROR, msg, status=status, content_type=ctype)

        if opts.respect_robots_optout:
            directive = robots_optout(resp.headers.get_all("X-Robots-Tag") or [], opts.robots_agent_names)
            if directive is not None:
                _abandon(conn, resp)  # do not read the body at all
                raise _Failure(
                    reasons.DOWNLOAD_ROBOTS_OPTOUT,
                    f"X-Robots-Tag: {directive}"[:200],
                    status=status,
                    content_type=ctype,
                )
        if resp.length is not None and resp.length > opts.max_bytes:
            _abandon(conn, resp)
            raise _Failure(
                reasons.DOWNLOAD_TOO_LARGE, f"Content-Length {resp.length} > {opts.max_bytes}",
                status=status, content_type=ctype,
            )  # fmt: skip
        body = bytearray()
        while True:
            chunk = resp.read(min(_CHUNK, opts.max_bytes + 1 - len(body)))
            if not chunk:
                break
            body += chunk
            if len(body) > opts.max_bytes:
                _abandon(conn, resp)  # stop early; the rest of the body is not worth the bandwidth
                raise _Failure(
                    reasons.DOWNLOAD_TOO_LARGE,
                    f"body exceeds {opts.max_bytes} bytes",
                    status=status,
                    content_type=ctype,
                )
        self._finish(conn, resp, target, drain=False)
        return _Response(status, ctype, bytes(body))

    def _finish(self, conn: _PinnedConnection, resp: http.client.HTTPResponse, target: _Target, *, drain: bool) -> None:
        """Return ``conn`` to the pool if its response is fully consumed and keep-alive; else close it."""
        if drain and not resp.isclosed():
            if resp.length is None or resp.length > _DRAIN_MAX:
                _abandon(conn, resp)
                return
            try:
                resp.read()
            except (OSError, http.client.HTTPException):
                _abandon(conn, resp)
                return
        if resp.will_close or not resp.isclosed():
            _abandon(conn, resp)
        else:
            self._pool.put(target.pool_key, conn)

    def _classify(self, exc: BaseException, phase: str, elapsed: float) -> _Failure:
        """Map a socket/http.client exception to a download reason."""
        if isinstance(exc, TimeoutError):
            return _Failure(reasons.DOWNLOAD_TIMEOUT, f"{phase} timeout after {elapsed:.1f} s", retryable=True)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, f"TLS certificate error: {exc.verify_message}")
        if isinstance(exc, ssl.SSLError):
            return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, f"TLS error: {exc.reason or exc}", retryable=True)
        if isinstance(exc, ConnectionRefusedError):
            return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, "connection refused", retryable=True)
        if isinstance(exc, http.client.RemoteDisconnected):
            return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, "server closed the connection", retryable=True)
        if isinstance(exc, ConnectionError):
            return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, "connection reset", retryable=True)
        if isinstance(exc, http.client.IncompleteRead):
            return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, "connection closed mid-body", retryable=True)
        if isinstance(exc, http.client.HTTPException):
            return _Failure(reasons.DOWNLOAD_HTTP_ERROR, f"protocol error: {type(exc).__name__}: {exc}"[:200])
        if isinstance(exc, OSError):
            return _Failure(
                reasons.DOWNLOAD_CONNECTION_ERROR, f"connection error: {exc.strerror or exc}", retryable=True
            )
        return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, f"{type(exc).__name__}: {exc}"[:200], retryable=True)
