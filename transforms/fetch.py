"""HTTP(S) image fetcher on asyncio and aiohttp: SSRF-safe, polite per host, deadline-bounded, exact about bodies.

Plain Python (no Beam) so that it can be tested and benchmarked on its own. One ``Fetcher`` per worker
process runs an event loop in a thread; ``submit`` hands it a URL from any thread, and a
``FetchWindow`` keeps a bounded number of fetches in flight (the Download stage keeps it full across
partitions, so one slow URL never holds the worker). aiohttp is the HTTP client; what is written here is
policy: which addresses, which opt-outs, which reason code.

Safety model
------------
* Only ``http``/``https`` URLs are fetched; no cookies, no proxies from the environment, no decompression
  (``Accept-Encoding: identity``, and aiohttp's decoding is off: images are compressed already).
* Every name is resolved by ``addresses.DnsCache``, which checks *every* address it resolves to; the
  aiohttp connector gets its addresses from the same cache through a resolver, so the connection goes
  to a checked address and no second lookup can swap in another (DNS rebinding). An IP literal is
  checked here before the request (aiohttp never resolves those). Host, SNI and certificate checks use
  the URL's name.
* Redirects are followed here, not by aiohttp: every hop goes through the same checks (and the opt-outs
  of its own host) before any packet is sent to it.

Time model
----------
* Connecting (DNS, TCP, TLS) takes at most ``connect_timeout_s``; once the request is sent, the whole
  response (status, headers and body) must arrive within ``read_timeout_s``: a hard deadline, so a
  server that drips one byte a second cannot stretch it. Once the body has started, a gap of
  ``idle_timeout_s`` with no byte is a stall and ends the request then (a stalled response costs that,
  not the whole read timeout). A body silent for ``stall_release_s`` gives its host slot back meanwhile
  (``hosts.SlotHold``): the host's next URL need not wait for a stall to time out.
* One attempt, all its redirect hops included, gets ``connect_timeout_s + read_timeout_s``; waiting for
  our own per-host slot or rate is not charged.
* Timeouts are not retried in line (``retry_timeouts`` turns that on): a stalled server costs one
  deadline, and ``--retry-failed`` revisits the URL later. 5xx, 429 and connection failures are
  retried ``retries`` times: 429 (and 503 with Retry-After) pause the whole host for the server's delay
  (capped at ``retry_after_max_s``), other failures sleep a full-jitter backoff.
* Per host (``hosts.py``): a connection cap, a request rate, and a circuit breaker that fails the host's
  remaining URLs fast (``download_host_unavailable``, transient) after repeated timeouts or
  connection failures.

Opt-outs (``optout.py``), each on by default: robots.txt and ``/.well-known/tdmrep.json`` are fetched once
per origin per worker (concurrent requests wait for the one fetch) and kept; X-Robots-Tag and
``tdm-reservation`` are read from each image response before its body. The signal that refused a URL
is in ``FetchResult.optout``.

Exact bodies: fewer bytes than Content-Length is ``download_truncated`` (transient). A connection is
reused only after its response was read to the end; one that sent more than its Content-Length is
dropped by aiohttp's parser (the response fails as a protocol error), never handed to the next URL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import email.utils
import functools
import logging
import queue
import random
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from altsieve import __version__
from altsieve.core import reasons
from altsieve.core.config import DownloadConfig
from altsieve.core.eventloop import new_event_loop
from altsieve.transforms import optout
from altsieve.transforms.addresses import (
    AddressBlocked,
    DnsCache,
    LookupFailed,
    blocked_reason,
    cares_lookup,
    ip_literal,
    parse_networks,
    system_lookup,
)
from altsieve.transforms.hosts import HostLimits, Hosts, SlotHold

logger = logging.getLogger(__name__)

T = TypeVar("T")

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
# RFC 9309: a cached robots.txt should not be used for more than 24 hours; a failed fetch is tried again sooner.
_ORIGIN_FILE_TTL_S = 24 * 3600.0
_ORIGIN_FILE_FAILURE_TTL_S = 30.0
_ORIGIN_FILES_MAX = 10_000
_ORIGIN_FILE_MAX_REDIRECTS = 5  # RFC 9309: follow at least five
# Characters left as-is when re-quoting paths; everything else (spaces, non-ASCII, control characters) is
# percent-encoded, which both rescues sloppy web URLs and makes header injection via the path impossible.
_PATH_SAFE = "!$%&'()*+,/:;=@[]~-._"
_QUERY_SAFE = _PATH_SAFE + "?"
_HOST_RE = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?$")
# Answers that say a host has more than it can take: its connection cap is halved (transforms/hosts.py).
_PUSHBACK_STATUSES = frozenset({429, 503})
_HOST_FAILURE_REASONS = frozenset({reasons.DOWNLOAD_TIMEOUT, reasons.DOWNLOAD_CONNECTION_ERROR,
                                   reasons.DOWNLOAD_TRUNCATED})


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


@dataclass
class FetchResult:
    """Outcome of one fetch; ``reason is None`` means ``body`` holds the response."""

    url: str
    final_url: str | None  # last URL requested (after redirects); None when the URL was never requested
    status_code: int | None  # last HTTP status seen, None when no response arrived
    content_type: str | None  # the declared media type, lower-cased, e.g. "image/jpeg" (parameters dropped)
    body: bytes | None  # only set on success
    reason: str | None  # None on success, else a reasons.* download/url code
    error_message: str | None  # short human text: "HTTP 404", "read timeout after 2.0 s"
    attempts: int  # HTTP attempts made (redirect hops within an attempt do not count)
    elapsed_s: float  # wall time including backoff sleeps
    optout: str | None = None  # the opt-out signal that refused the URL (optout.ROBOTS_TXT, ...)

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
        optout: str | None = None,
        pushback: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.content_type = content_type
        self.optout = optout
        self.pushback = pushback  # no connection to the host (refused, failed, timed out): fewer connections
        self.target: _Target | None = None  # where a retry should resume (the hop that failed)
        self.url: str | None = None  # the URL that failed, reported as final_url
        self.redirects = 0  # redirects followed before the failure, so a retry keeps counting
        self.paused_host = False  # the failure already paused its host (429 / Retry-After): no own sleep

    def copy(self) -> _Failure:
        twin = _Failure(self.reason, self.message, retryable=self.retryable, status=self.status,
                        retry_after=self.retry_after, content_type=self.content_type, optout=self.optout,
                        pushback=self.pushback)
        twin.paused_host = self.paused_host
        return twin


# --------------------------------------------------------------------------------------------------------
# Pure helpers (no network): Retry-After, URL parsing
# --------------------------------------------------------------------------------------------------------


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
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    def at(self, path: str) -> str:
        """The URL of ``path`` on this target's origin."""
        return self.url[: len(self.url) - len(self.request_target)] + path


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
    literal = ip_literal(hostname)
    if literal is not None:
        host = str(literal)
    else:
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


def _media_type(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


@functools.lru_cache(maxsize=1)
def _default_ssl_context() -> ssl.SSLContext:
    """The CA bundles loaded once per process (39-44 ms), shared by its fetchers (a context serves any number of
    connections); the fork server loads it before it forks (preload)."""
    ctx = ssl.create_default_context()
    try:
        import certifi

        # Why: slim container images often lack a system CA bundle; certifi's is added, not substituted.
        ctx.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    return ctx


def preload() -> None:
    """What a worker's fetcher loads, loaded in the fork server before it forks (beam_worker.PRELOAD_CALLS)."""
    _default_ssl_context()


_timeout_at: Callable[[float], Any] = getattr(asyncio, "timeout_at", None) or __import__("async_timeout").timeout_at


# --------------------------------------------------------------------------------------------------------
# aiohttp glue: the checked resolver, the "request sent" signal
# --------------------------------------------------------------------------------------------------------


class _CheckedResolver(AbstractResolver):
    """aiohttp's view of the DNS cache: it only ever sees addresses the policy checked."""

    def __init__(self, dns: DnsCache) -> None:
        self._dns = dns

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[dict[str, Any]]:
        addresses = await self._dns.resolve(host)
        return [
            {"hostname": host, "host": address, "port": port, "family": fam, "proto": 0,
             "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV}
            for fam, address in addresses if family in (socket.AF_UNSPEC, fam)
        ]

    async def close(self) -> None:
        pass


class _Phase:
    """Per-request context: when the request headers went out, the response deadline starts."""

    def __init__(self, on_sent: Callable[[], None]) -> None:
        self.name = "connect"
        self._on_sent = on_sent

    def sent(self) -> None:
        if self.name == "connect":
            self.name = "read"
            self._on_sent()


async def _on_request_headers_sent(_session: Any, context: Any, _params: Any) -> None:
    phase = context.trace_request_ctx
    if isinstance(phase, _Phase):
        phase.sent()


@dataclass
class _Response:
    """A hop's outcome that is not an error: a success body or a redirect location."""

    status: int
    content_type: str | None
    body: bytes | None = None
    location: str | None = None


@dataclass
class _OriginFile:
    """robots.txt or tdmrep.json of one origin: the fetch in progress or done, and until when it may be used."""

    task: asyncio.Future[Any]
    expires: float = float("inf")


# --------------------------------------------------------------------------------------------------------
# Fetcher
# --------------------------------------------------------------------------------------------------------


@dataclass
class FetchStats:
    """What a Fetcher did besides fetching the URLs it was given (Beam counters of the Download stage)."""

    robots_fetches: int = 0
    tdmrep_fetches: int = 0
    dns_lookups: int = 0
    breaker_trips: int = 0
    host_cap_cuts: int = 0  # a host's connection cap halved for pushing back (transforms/hosts.py)


class Fetcher:
    """One per worker process; thread-safe ``submit``/``fetch``. A fetch never raises for network problems."""

    def __init__(self, config: DownloadConfig | None = None, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._config = config or DownloadConfig()
        self._allowed = parse_networks(self._config.allow_private_addresses)
        self._ssl_context = ssl_context or _default_ssl_context()
        self._agents = tuple(self._config.optout_agent_names)
        self._headers = {
            "User-Agent": self._config.user_agent or DEFAULT_USER_AGENT,
            "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
            "Accept-Encoding": "identity",  # images are already compressed; avoids decoding bombs
        }
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stats = FetchStats()

    @property
    def config(self) -> DownloadConfig:
        return self._config

    def stats(self) -> dict[str, int]:
        """Counts so far: robots.txt and tdmrep.json fetches, DNS queries sent, circuit-breaker trips, host caps
        cut."""
        dns = getattr(self, "_dns", None)
        if dns is not None:
            self._stats.dns_lookups = dns.lookups
        return dataclasses.asdict(self._stats)

    # ---- public API ------------------------------------------------------------------------------------

    def submit(self, url: str) -> cf.Future[FetchResult]:
        """Start fetching ``url`` on the fetcher's loop; the future completes with its FetchResult."""
        return self.submit_many([url])[0]

    def submit_many(self, urls: list[str]) -> list[cf.Future[FetchResult]]:
        """Start fetching ``urls``; one future each. Cancelling a future cancels its fetch.

        Why one call for many: each hand-over wakes the loop thread through its self-pipe, measured at
        0.4 ms of the caller's time per URL on a busy machine (5 % of a worker's time per image).
        """
        loop = self._ensure_started()
        futures: list[cf.Future[FetchResult]] = [cf.Future() for _ in urls]

        def start() -> None:
            for url, future in zip(urls, futures, strict=True):
                if future.cancelled():
                    continue
                task = loop.create_task(self._fetch(url))
                task.add_done_callback(functools.partial(_deliver, future))
                future.add_done_callback(functools.partial(_cancel_task, loop, task))

        loop.call_soon_threadsafe(start)
        return futures

    def fetch(self, url: str) -> FetchResult:
        return self.submit(url).result()

    def fetch_many(self, urls: Iterable[tuple[T, str]]) -> Iterator[tuple[T, FetchResult]]:
        """Fetch ``(key, url)`` pairs, yielding ``(key, result)`` in completion order.

        The input is pulled lazily: at most ``concurrency`` URLs are in flight or waiting to be yielded,
        so memory stays bounded for any input size. Abandoning the iterator cancels the fetches in flight.
        """
        window: FetchWindow[T] = FetchWindow(self)
        try:
            for key, url in urls:
                while window.full:
                    yield from window.take_ready()
                window.submit(key, url)
            while window.in_flight:
                yield window.take()
        finally:
            window.cancel()

    def close(self) -> None:
        """Stop the loop thread and close connections; the Fetcher stays usable (a later submit restarts it)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        except (cf.TimeoutError, RuntimeError):
            logger.warning("fetcher did not shut down cleanly", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- loop thread -----------------------------------------------------------------------------------

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = new_event_loop(self._config.event_loop)
                thread = threading.Thread(target=loop.run_forever, name="altsieve-fetch", daemon=True)
                thread.start()
                asyncio.run_coroutine_threadsafe(self._open(), loop).result()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _open(self) -> None:
        cfg = self._config
        lookup = (cares_lookup if cfg.dns_resolver == "c-ares" else system_lookup)(cfg.connect_timeout_s)
        self._dns = DnsCache(lookup, self._allowed)
        self._hosts = Hosts(HostLimits(
            concurrency=cfg.per_host_concurrency, max_concurrency=cfg.per_host_concurrency_max,
            requests_per_s=cfg.per_host_requests_per_s,
            burst=cfg.per_host_burst, breaker_failures=cfg.breaker_failures,
            breaker_cooldown_s=cfg.breaker_cooldown_s,
        ))
        self._robots: OrderedDict[tuple[str, str, int], _OriginFile] = OrderedDict()
        self._tdmrep: OrderedDict[tuple[str, str, int], _OriginFile] = OrderedDict()
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_on_request_headers_sent)
        connector = aiohttp.TCPConnector(
            resolver=_CheckedResolver(self._dns), use_dns_cache=False, limit=0, limit_per_host=0,
            ssl=self._ssl_context, keepalive_timeout=_POOL_IDLE_S,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, auto_decompress=False, trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(), trace_configs=[trace], raise_for_status=False,
            # Deadlines are ours (see _hop); aiohttp's own only bounds each TCP connect.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s),
        )

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._session.close()

    # ---- one URL ---------------------------------------------------------------------------------------

    async def _fetch(self, url: str) -> FetchResult:
        start = time.monotonic()
        cfg = self._config
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
                    target, response = await self._attempt(target, redirects)
                    return FetchResult(
                        url, target.url, response.status, response.content_type, response.body,
                        None, None, attempts, time.monotonic() - start,
                    )  # fmt: skip
                except _Failure as failure:
                    final_url = failure.url or final_url
                    status = failure.status if failure.status is not None else status
                    if not self._retry_in_line(failure) or attempts > cfg.retries:
                        raise
                    await self._sleep_before_retry(failure, attempts - 1)
                    # Why: resume where the chain failed, keeping the redirects already followed.
                    target = failure.target or target
                    redirects = failure.redirects
        except _Failure as failure:
            return FetchResult(
                url, failure.url or final_url, failure.status if failure.status is not None else status,
                failure.content_type, None, failure.reason, failure.message, attempts, time.monotonic() - start,
                failure.optout,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # last resort: a weird server must not kill a bundle of a million URLs
            logger.warning("unexpected error fetching %s", url, exc_info=True)
            return FetchResult(
                url, final_url, status, None, None, reasons.DOWNLOAD_UNEXPECTED_ERROR,
                f"unexpected error: {type(exc).__name__}: {exc}"[:200], attempts, time.monotonic() - start,
            )  # fmt: skip

    def _retry_in_line(self, failure: _Failure) -> bool:
        if not failure.retryable:
            return False
        return failure.reason != reasons.DOWNLOAD_TIMEOUT or self._config.retry_timeouts

    async def _sleep_before_retry(self, failure: _Failure, retry_index: int) -> None:
        if failure.paused_host:
            return  # the host is paused for Retry-After; the next attempt waits for it in its slot
        cfg = self._config
        delay = random.uniform(0.0, min(cfg.backoff_max_s, cfg.backoff_base_s * 2**retry_index))
        if delay > 0:
            await asyncio.sleep(delay)

    async def _attempt(self, target: _Target, redirects: int) -> tuple[_Target, _Response]:
        """One attempt: follow redirects until a final response; raises _Failure with .target/.url set."""
        cfg = self._config
        # Why a budget rather than a fixed deadline: time spent queueing on our own per-host limits is
        # not the server's fault and must not turn into a timeout.
        budget = cfg.connect_timeout_s + cfg.read_timeout_s
        while True:
            try:
                await self._admit(target)
                spent, response = await self._hop_in_slot(target, budget, image=True)
                budget -= spent
            except _Failure as failure:
                failure.target, failure.url, failure.redirects = target, target.url, redirects
                raise
            if response.location is None:
                return target, response
            redirects += 1
            next_url = urljoin(target.url, response.location.strip())
            if redirects > cfg.max_redirects:
                failure = _Failure(
                    reasons.DOWNLOAD_TOO_MANY_REDIRECTS, f"more than {cfg.max_redirects} redirects",
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

    async def _hop_in_slot(self, target: _Target, budget: float, *, image: bool,
                           max_bytes: int | None = None) -> tuple[float, _Response]:
        """One request inside the host's slot; counts its outcome for the host's circuit breaker."""
        host = self._hosts.get(target.host)
        async with host.slot() as hold:
            self._check_breaker(target)
            started = time.monotonic()
            try:
                response = await self._hop(target, started + budget, image=image, max_bytes=max_bytes, hold=hold)
            except _Failure as failure:
                if failure.status is not None or failure.pushback:  # the host answered, or refused us
                    pushback = failure.pushback or failure.status in _PUSHBACK_STATUSES
                    if host.answered(started, pushback=pushback):
                        self._stats.host_cap_cuts += 1
                if failure.status is not None:  # an HTTP answer, even an error, says the host is up
                    host.record(failed=False, started=started)
                elif failure.reason in _HOST_FAILURE_REASONS and host.record(failed=True, started=started):
                    self._stats.breaker_trips += 1
                    logger.info("host %s: %d failures in a row, failing its URLs for %.0f s", target.host,
                                self._config.breaker_failures, self._config.breaker_cooldown_s)
                if failure.reason == reasons.DOWNLOAD_RATE_LIMITED or (
                        failure.status == 503 and failure.retry_after is not None):
                    self._pause_host(target, failure)
                raise
            host.record(failed=False, started=started)
            host.answered(started, pushback=False)
            return time.monotonic() - started, response

    def _pause_host(self, target: _Target, failure: _Failure) -> None:
        cfg = self._config
        delay = failure.retry_after if failure.retry_after is not None else cfg.backoff_base_s
        self._hosts.get(target.host).pause(min(delay, cfg.retry_after_max_s))
        failure.paused_host = True

    def _check_breaker(self, target: _Target) -> None:
        host = self._hosts.get(target.host)
        if host.breaker_open():
            raise _Failure(
                reasons.DOWNLOAD_HOST_UNAVAILABLE,
                f"host {target.host}: {self._config.breaker_failures} timeouts or connection failures in a row; "
                f"not tried again for {host.open_until - time.monotonic():.0f} s",
            )

    # ---- policy before a request ------------------------------------------------------------------------

    async def _check_address(self, target: _Target) -> None:
        """The address policy: an IP literal checked here, a name resolved (and every address checked) now."""
        literal = ip_literal(target.host)
        if literal is not None:
            why = blocked_reason(literal, self._allowed)
            if why is not None:
                raise _Failure(reasons.DOWNLOAD_BLOCKED_ADDRESS, f"blocked address: {why}")
            return
        try:
            await self._dns.resolve(target.host)
        except AddressBlocked as exc:
            raise _Failure(reasons.DOWNLOAD_BLOCKED_ADDRESS, str(exc)) from None
        except LookupFailed as exc:
            raise _Failure(reasons.DOWNLOAD_DNS_ERROR, str(exc), retryable=exc.retryable) from None

    async def _admit(self, target: _Target) -> None:
        """Everything that may refuse a URL before it is requested: address, breaker, robots.txt, tdmrep.json."""
        await self._check_address(target)
        self._check_breaker(target)
        cfg = self._config
        if cfg.respect_robots_txt:
            rules = await self._origin_file(self._robots, target, optout.ROBOTS_PATH)
            agent = rules.disallowed(target.url)
            if agent is not None:
                raise _Failure(reasons.DOWNLOAD_ROBOTS_TXT, f"robots.txt disallows it for {agent}",
                               optout=optout.ROBOTS_TXT)
        if cfg.respect_tdmrep:
            tdm = await self._origin_file(self._tdmrep, target, optout.TDMREP_PATH)
            location = tdm.reserved(target.request_target)
            if location is not None:
                raise _Failure(reasons.DOWNLOAD_TDM_RESERVED, f"tdmrep.json reserves {location}"[:200],
                               optout=optout.TDMREP_JSON)

    async def _origin_file(self, cache: OrderedDict[tuple[str, str, int], _OriginFile], target: _Target,
                           path: str) -> Any:
        """robots.txt / tdmrep.json rules of the target's origin: fetched once, shared by every waiting URL."""
        key = target.origin
        entry = cache.get(key)
        if entry is None or entry.expires <= time.monotonic():
            task = asyncio.ensure_future(self._load_origin_file(target, path))
            entry = cache[key] = _OriginFile(task)

            def _set_expiry(done: asyncio.Future[Any], entry: _OriginFile = entry) -> None:
                failed = done.cancelled() or done.exception() is not None
                ttl = _ORIGIN_FILE_FAILURE_TTL_S if failed else _ORIGIN_FILE_TTL_S
                entry.expires = time.monotonic() + ttl

            task.add_done_callback(_set_expiry)
            while len(cache) > _ORIGIN_FILES_MAX:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        try:
            return await asyncio.shield(entry.task)
        except _Failure as failure:
            raise failure.copy() from None

    async def _load_origin_file(self, target: _Target, path: str) -> Any:
        if path == optout.ROBOTS_PATH:
            self._stats.robots_fetches += 1
            content = await self._get_origin_file(target, path, optout.ROBOTS_MAX_BYTES)
            return optout.RobotsRules(content, self._agents)
        self._stats.tdmrep_fetches += 1
        try:
            content = await self._get_origin_file(target, path, optout.TDMREP_MAX_BYTES)
        except _Failure:
            content = None  # an unreachable tdmrep.json declares nothing; the response headers still count
        return optout.TdmRules(content)

    async def _get_origin_file(self, target: _Target, path: str, max_bytes: int) -> bytes | None:
        """The body of ``path`` on the target's origin; None when the file is unavailable (4xx, not there).

        A server error, 429 or network failure raises: for robots.txt (RFC 9309) that makes the file
        "unreachable", which refuses the origin's URLs for now (a transient reason); _load_origin_file
        reads an unreachable tdmrep.json as declaring nothing.
        """
        name = path.rsplit("/", 1)[-1]
        current = _parse_target(target.at(path))
        for _ in range(_ORIGIN_FILE_MAX_REDIRECTS + 1):
            await self._check_address(current)
            try:
                _, response = await self._hop_in_slot(current, self._config.connect_timeout_s
                                                      + self._config.read_timeout_s, image=False, max_bytes=max_bytes)
            except _Failure as failure:
                if failure.status is not None and 400 <= failure.status < 500 and failure.status != 429:
                    return None  # RFC 9309 "unavailable": no rules
                if failure.status is not None:
                    failure.message = f"{name}: {failure.message}"
                raise
            if response.location is None:
                return response.body
            try:
                current = _parse_target(urljoin(current.url, response.location.strip()))
            except _Failure:
                return None
        return None

    # ---- one request ------------------------------------------------------------------------------------

    async def _hop(self, target: _Target, deadline: float, *, image: bool, max_bytes: int | None,
                   hold: SlotHold | None = None) -> _Response:
        """One request/response; the connect phase and the response each under their own deadline."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        started = loop.time()
        response_deadline = float("inf")
        stall = _StallWatch(loop, hold, cfg.stall_release_s) if hold is not None and cfg.stall_release_s else None
        if ip_literal(target.host) is not None:  # aiohttp connects to a literal without asking the resolver
            await self._check_address(target)
        try:
            async with _timeout_at(min(deadline, started + cfg.connect_timeout_s)) as timer:
                phase = _Phase(lambda: timer.reschedule(min(deadline, loop.time() + cfg.read_timeout_s)))
                async with self._session.get(URL(target.url, encoded=True), allow_redirects=False,
                                             trace_request_ctx=phase) as resp:
                    phase.sent()  # a reused connection may skip the signal on some aiohttp paths
                    response_deadline = timer.when() if hasattr(timer, "when") else timer.deadline

                    def next_read() -> None:  # the body must keep coming: a gap of idle_timeout_s is a stall
                        timer.reschedule(min(response_deadline, loop.time() + cfg.idle_timeout_s))
                        phase.name = "idle"
                        if stall is not None:
                            stall.read()

                    return await self._consume(resp, image=image, max_bytes=max_bytes or cfg.max_bytes,
                                               next_read=next_read)
        except _Failure:
            raise
        except TimeoutError:
            elapsed = loop.time() - started
            message = (f"read timeout after {elapsed:.1f} s (no data for {cfg.idle_timeout_s:g} s)"
                       if phase.name == "idle" and loop.time() < response_deadline
                       else f"{'connect' if phase.name == 'connect' else 'read'} timeout after {elapsed:.1f} s")
            raise _Failure(reasons.DOWNLOAD_TIMEOUT, message, retryable=True,
                           pushback=phase.name == "connect") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _classify(exc) from None
        except ValueError as exc:  # yarl / aiohttp refusing the request line
            raise _Failure(reasons.URL_INVALID, f"invalid request: {exc}"[:200]) from None
        finally:
            if stall is not None:
                stall.cancel()

    async def _consume(self, resp: aiohttp.ClientResponse, *, image: bool, max_bytes: int,
                       next_read: Callable[[], None]) -> _Response:
        """Interpret a response: redirect, error status, opt-out, or body (bounded by max_bytes)."""
        cfg = self._config
        status = resp.status
        ctype = _media_type(resp.headers.get("Content-Type"))

        if status in _REDIRECT_STATUSES:
            location = resp.headers.get("Location")
            await _discard(resp)
            if not location:
                raise _Failure(reasons.DOWNLOAD_HTTP_ERROR, f"HTTP {status} without Location", status=status)
            return _Response(status, ctype, location=location)

        if not 200 <= status < 300:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            await _discard(resp)
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

        if image:
            if cfg.respect_robots_optout:
                directive = optout.robots_optout(resp.headers.getall("X-Robots-Tag", []), self._agents)
                if directive is not None:
                    resp.close()  # do not read the body at all
                    raise _Failure(reasons.DOWNLOAD_ROBOTS_OPTOUT, f"X-Robots-Tag: {directive}"[:200],
                                   status=status, content_type=ctype, optout=optout.X_ROBOTS_TAG)
            if cfg.respect_tdmrep and optout.tdm_header_reserved(resp.headers.getall("tdm-reservation", [])):
                resp.close()
                policy = resp.headers.get("tdm-policy")
                raise _Failure(reasons.DOWNLOAD_TDM_RESERVED,
                               ("tdm-reservation: 1" + (f" (policy {policy})" if policy else ""))[:200],
                               status=status, content_type=ctype, optout=optout.TDM_HEADER)
        length = resp.content_length
        if image and length is not None and length > max_bytes:
            resp.close()
            raise _Failure(reasons.DOWNLOAD_TOO_LARGE, f"Content-Length {length} > {max_bytes}",
                           status=status, content_type=ctype)
        body = bytearray()
        while True:
            next_read()
            chunk = await resp.content.read(min(_CHUNK, max_bytes + 1 - len(body)))
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                resp.close()  # stop early; the rest of the body is not worth the bandwidth
                if not image:
                    del body[max_bytes:]  # robots.txt and tdmrep.json: the first max_bytes are what counts
                    break
                raise _Failure(reasons.DOWNLOAD_TOO_LARGE, f"body exceeds {max_bytes} bytes",
                               status=status, content_type=ctype)
        return _Response(status, ctype, bytes(body))


class _StallWatch:
    """Gives a request's host slot back once its body has sent nothing for ``after_s`` (a suspected stall): one
    timer a request, moved on only when it fires early (a normal response ends before it ever does)."""

    __slots__ = ("_loop", "_hold", "_after", "_last", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, hold: SlotHold, after_s: float) -> None:
        self._loop, self._hold, self._after = loop, hold, after_s
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def read(self) -> None:
        self._last = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + self._after, self._check)

    def _check(self) -> None:
        due = self._last + self._after
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._timer = None
        self._hold.release_stalled()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _deliver(future: cf.Future[FetchResult], task: asyncio.Task[FetchResult]) -> None:
    """Hand a finished fetch task's outcome to the caller's future (on the loop thread)."""
    if not future.set_running_or_notify_cancel():
        return  # the caller cancelled it
    if task.cancelled():
        future.set_exception(cf.CancelledError())
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


def _cancel_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[FetchResult], future: cf.Future[Any]) -> None:
    if future.cancelled():
        loop.call_soon_threadsafe(task.cancel)


async def _discard(resp: aiohttp.ClientResponse) -> None:
    """Read a small error/redirect body so the connection can be reused; drop the connection otherwise."""
    length = resp.content_length
    if length is None or length > _DRAIN_MAX:
        resp.close()
        return
    try:
        await resp.read()
    except (aiohttp.ClientError, OSError):
        resp.close()


def _classify(exc: BaseException) -> _Failure:
    """Map an aiohttp / socket exception to a download reason."""
    cause = getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(cause, AddressBlocked):
        return _Failure(reasons.DOWNLOAD_BLOCKED_ADDRESS, str(cause))
    if isinstance(cause, LookupFailed):
        return _Failure(reasons.DOWNLOAD_DNS_ERROR, str(cause), retryable=cause.retryable)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        detail = getattr(cert, "verify_message", None) or str(cert)
        return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, f"TLS certificate error: {detail}"[:200])
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, f"TLS error: {exc}"[:200], retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, "connection refused", retryable=True, pushback=True)
        detail = exc.os_error.strerror or str(exc.os_error) if exc.os_error else str(exc)
        return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, f"connection error: {detail}"[:200], retryable=True,
                        pushback=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, "server closed the connection", retryable=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        # Fewer bytes than Content-Length (or a chunked body cut short): the server or the network broke off.
        return _Failure(reasons.DOWNLOAD_TRUNCATED, f"body cut short: {exc}"[:200], retryable=True)
    if isinstance(exc, ssl.SSLError):
        return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, f"TLS error: {exc.reason or exc}"[:200], retryable=True)
    if isinstance(exc, ConnectionError | aiohttp.ClientOSError):
        return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, "connection reset", retryable=True)
    if isinstance(exc, aiohttp.InvalidURL):
        return _Failure(reasons.URL_INVALID, f"invalid URL: {exc}"[:200])
    if isinstance(exc, aiohttp.ClientResponseError):  # the response could not be parsed: not HTTP as we know it
        return _Failure(reasons.DOWNLOAD_HTTP_ERROR, f"protocol error: {exc.message}"[:200])
    if isinstance(exc, OSError):
        return _Failure(reasons.DOWNLOAD_CONNECTION_ERROR, f"connection error: {exc.strerror or exc}"[:200],
                        retryable=True)
    return _Failure(reasons.DOWNLOAD_HTTP_ERROR, f"protocol error: {type(exc).__name__}: {exc}"[:200])


# --------------------------------------------------------------------------------------------------------
# The window the Download stage keeps full
# --------------------------------------------------------------------------------------------------------


class FetchWindow(Generic[T]):
    """At most ``capacity`` fetches running; results in completion order.

    ``run_ahead_bytes`` / ``run_ahead_results``: how much finished work may wait to be taken before
    the window counts as full. With none (the default) a finished result holds its slot until taken,
    so the window is ``capacity`` fetches in flight or waiting. The Download stage gives it room:
    when decoding is the bottleneck the finished bodies queue there while ``capacity`` requests keep
    running, so the slow tail (stalls that end only at ``idle_timeout_s``) is fetched while the CPU
    decodes, not after it (measured in core/config.py beside ``run_ahead_mib``).

    Submissions are handed to the fetcher in batches (when a take would wait, at ``flush``, or every
    64), so that one wake-up of its loop starts many requests. Not thread-safe: one thread submits and
    takes (the fetches themselves run on the fetcher's loop).
    """

    _BATCH = 64

    def __init__(self, fetcher: Fetcher, capacity: int | None = None, run_ahead_bytes: int = 0,
                 run_ahead_results: int = 0) -> None:
        self._fetcher = fetcher
        self._capacity = capacity or fetcher.config.concurrency
        self._run_ahead_bytes, self._run_ahead_results = run_ahead_bytes, run_ahead_results
        self._done: queue.SimpleQueue[tuple[T, cf.Future[FetchResult]]] = queue.SimpleQueue()
        self._pending: set[cf.Future[FetchResult]] = set()
        self._batch: list[tuple[T, str]] = []
        self.in_flight = 0  # submitted and not yet taken
        # Finished and not yet taken (their count and body bytes): written by the fetcher's loop thread.
        self._finished_lock = threading.Lock()
        self._finished = 0
        self._finished_bytes = 0

    @property
    def full(self) -> bool:
        if not (self._run_ahead_bytes or self._run_ahead_results):
            return self.in_flight >= self._capacity
        with self._finished_lock:
            finished, finished_bytes = self._finished, self._finished_bytes
        return (self.in_flight - finished >= self._capacity or finished_bytes >= self._run_ahead_bytes
                or finished >= self._run_ahead_results)

    def submit(self, key: T, url: str) -> None:
        self._batch.append((key, url))
        self.in_flight += 1
        if len(self._batch) >= self._BATCH:
            self.flush()

    def flush(self) -> None:
        """Start the submitted fetches not started yet."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        futures = self._fetcher.submit_many([url for _, url in batch])
        for (key, _), future in zip(batch, futures, strict=True):
            self._pending.add(future)
            future.add_done_callback(functools.partial(self._on_done, key))

    def _on_done(self, key: T, future: cf.Future[FetchResult]) -> None:
        with self._finished_lock:
            self._finished += 1
            self._finished_bytes += _body_size(future)
        self._done.put((key, future))

    def take(self, block: bool = True) -> Any:
        """The next completed ``(key, result)``; None when nothing is in flight (or, not blocking, none is done)."""
        if self.in_flight == 0:
            return None
        if block:
            self.flush()
        try:
            key, future = self._done.get(block=block)
        except queue.Empty:
            return None
        self.in_flight -= 1
        with self._finished_lock:
            self._finished -= 1
            self._finished_bytes -= _body_size(future)
        self._pending.discard(future)
        return key, future.result()

    def take_ready(self) -> Iterator[tuple[T, FetchResult]]:
        """Wait for one result, then also every other that is done by the time it is consumed."""
        item = self.take()
        while item is not None:
            yield item
            item = self.take(block=False)

    def cancel(self) -> None:
        self._batch.clear()
        for future in list(self._pending):
            future.cancel()
        self._pending.clear()
        self.in_flight = 0
        with self._finished_lock:
            self._finished = self._finished_bytes = 0


def _body_size(future: cf.Future[FetchResult]) -> int:
    if future.cancelled() or future.exception() is not None:
        return 0
    body = future.result().body
    return len(body) if body is not None else 0
