"""Which addresses the downloader may contact, and an in-process DNS cache that only hands out checked ones.

URLs come from the web, so a name may resolve to (or a redirect may point at) the user's own network:
private, loopback, link-local (cloud metadata at 169.254.169.254), multicast, reserved. ``blocked_reason``
says why such an address is refused unless the user opened its network. ``DnsCache`` resolves a name,
checks *every* address it resolves to (one bad address refuses the host: an attacker controls which one
a resolver returns first), and keeps the checked answer for as long as its TTL says, so the connection
is made to an address that was checked and no second lookup can swap in another (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (family, address) pairs, and the TTL of the answer in seconds (None: the resolver does not say).
Answer = tuple[list[tuple[int, str]], float | None]
Lookup = Callable[[str], Awaitable[Answer]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


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


def ip_literal(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal (no brackets), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------------


class AddressBlocked(OSError):
    """A name resolved to an address the policy refuses (an OSError so that aiohttp's connector passes it on)."""


class LookupFailed(OSError):
    """The name did not resolve; ``retryable`` when the resolver said "try again" rather than "no such name"."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


# c-ares status codes (pycares.errno) that mean "no such name / no address": a later try will not help.
_CARES_NOT_FOUND = frozenset({1, 4, 8, 19})  # ENODATA, ENOTFOUND, EBADNAME, ENONAME


def cares_lookup(timeout_s: float) -> Lookup:
    """A c-ares (aiodns) lookup: asynchronous, reads /etc/hosts, and reports each answer's TTL.

    Call it inside the event loop that will await it (c-ares binds to the running loop).
    """
    import aiodns

    resolver = aiodns.DNSResolver(timeout=timeout_s, tries=2)

    async def lookup(host: str) -> Answer:
        try:
            result = await resolver.getaddrinfo(host, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
        except aiodns.error.DNSError as err:
            code = err.args[0] if err.args else None
            text = err.args[1] if len(err.args) > 1 else str(err)
            raise LookupFailed(f"DNS: {text}", retryable=code not in _CARES_NOT_FOUND) from None
        addresses = [(node.family, node.addr[0].decode("ascii")) for node in result.nodes]
        ttls = [node.ttl for node in result.nodes if node.ttl is not None]
        return addresses, float(min(ttls)) if ttls else None

    return lookup


def system_lookup(timeout_s: float) -> Lookup:
    """The operating system's resolver (getaddrinfo in a thread): nsswitch, mDNS, split DNS; it gives no TTLs."""

    async def lookup(host: str) -> Answer:
        loop = asyncio.get_running_loop()
        # Why socket.getaddrinfo in an executor, not loop.getaddrinfo: uvloop's resolves through libuv, and the
        # same resolver call on either loop keeps one behaviour (and one place the tests' fake DNS stands in).
        query = functools.partial(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        try:
            infos = await asyncio.wait_for(loop.run_in_executor(None, query), timeout_s)
        except socket.gaierror as exc:
            # Why: EAI_AGAIN is the resolver saying "try later"; a name that does not exist will not
            # appear within a few seconds, so only the former is retried.
            raise LookupFailed(f"DNS: {exc.strerror or exc}", retryable=exc.errno == socket.EAI_AGAIN) from None
        except asyncio.TimeoutError:
            raise LookupFailed(f"DNS: no answer within {timeout_s:.1f} s", retryable=True) from None
        return [(family, sockaddr[0]) for family, _t, _p, _c, sockaddr in infos], None

    return lookup


@dataclass
class _Entry:
    expires: float
    addresses: tuple[tuple[int, str], ...] = ()
    blocked: str | None = None  # why the answer is refused (AddressBlocked)
    failed: str | None = None  # the name does not resolve (LookupFailed, not retryable)


class DnsCache:
    """Checked answers per host name, kept for the answer's TTL (clamped), shared by every request of a worker.

    Concurrent lookups of one name wait for one query. A name that does not exist is remembered for
    ``negative_ttl_s``; a refused answer (a blocked address) for its TTL; a temporary failure not at all.
    At most ``max_entries`` names are kept (least recently used dropped first).
    """

    def __init__(self, lookup: Lookup, allowed: Sequence[IPNetwork], *, min_ttl_s: float = 5.0,
                 max_ttl_s: float = 3600.0, default_ttl_s: float = 60.0, negative_ttl_s: float = 60.0,
                 max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup, self._allowed = lookup, tuple(allowed)
        self._min_ttl, self._max_ttl, self._default_ttl = min_ttl_s, max_ttl_s, default_ttl_s
        self._negative_ttl, self._max_entries, self._clock = negative_ttl_s, max_entries, clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self.lookups = 0  # queries actually sent (cache misses), for tests and metrics

    async def resolve(self, host: str) -> list[tuple[int, str]]:
        """(family, address) of every address of ``host``, all checked; raises AddressBlocked or LookupFailed."""
        entry = self._entries.get(host)
        if entry is not None and entry.expires > self._clock():
            self._entries.move_to_end(host)
        else:
            pending = self._inflight.get(host)
            if pending is None:
                pending = self._inflight[host] = asyncio.get_running_loop().create_future()
                try:
                    entry = await self._query(host)
                except BaseException as exc:
                    pending.set_exception(exc)
                    pending.exception()  # retrieved: waiters re-raise it, and no "never retrieved" warning
                    raise
                else:
                    pending.set_result(entry)
                finally:
                    del self._inflight[host]
            else:
                entry = await asyncio.shield(pending)
        # Fresh exceptions each time: a shared one would pile up tracebacks.
        if entry.blocked is not None:
            raise AddressBlocked(entry.blocked)
        if entry.failed is not None:
            raise LookupFailed(entry.failed, retryable=False)
        return list(entry.addresses)

    async def _query(self, host: str) -> _Entry:
        self.lookups += 1
        try:
            addresses, ttl = await self._lookup(host)
        except LookupFailed as failure:
            if failure.retryable:
                raise
            entry = _Entry(self._clock() + self._negative_ttl, failed=str(failure))
            self._store(host, entry)
            return entry
        keep = max(self._min_ttl, min(self._max_ttl, ttl if ttl is not None else self._default_ttl))
        checked: list[tuple[int, str]] = []
        for family, address in dict.fromkeys(addresses):
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            why = blocked_reason(address.split("%", 1)[0], self._allowed)
            if why is not None:
                # Why the whole host: we do not get to pick which address a later resolution or a
                # round-robin would have handed out.
                entry = _Entry(self._clock() + keep, blocked=f"blocked address: {why}")
                break
            checked.append((family, address))
        else:
            if not checked:
                entry = _Entry(self._clock() + self._negative_ttl, failed="DNS: no usable address")
            else:
                entry = _Entry(self._clock() + keep, tuple(checked))
        self._store(host, entry)
        return entry

    def _store(self, host: str, entry: _Entry) -> None:
        self._entries[host] = entry
        self._entries.move_to_end(host)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
