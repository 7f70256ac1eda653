"""Per-host politeness and health for the asynchronous fetcher: one ``HostState`` per host name, per worker.

* A connection cap that adapts (``per_host_concurrency`` requests in flight to start with, up to
  ``per_host_concurrency_max``): additive increase, multiplicative decrease, as TCP's congestion window. A
  host whose URLs queue for a connection gets one more per answer until it first pushes back (a 429, a 503, a
  connection refused, failed or timed out), which halves its cap; from then on one more per round of answers
  (as many answers as it has connections). Only answers to requests sent after the last cut cut again: a
  round of 429s sent together is one signal, not one per response.
* A request rate: a token bucket (GCRA form: each request reserves the next free send time, so
  waiters queue in order without polling), ``per_host_requests_per_s`` with a burst of ``per_host_burst``.
* A pause for the whole host: a 429 (or a 503 with Retry-After) stops every request to it until the
  server's delay is over, not only the one that got it.
* A circuit breaker: after ``breaker_failures`` timeouts or connection failures in a row, the host's
  requests fail fast for ``breaker_cooldown_s``; then requests go through again, and one more failure
  opens it again. "In a row" counts only requests started after the host's last success: stalled
  requests sent together time out together, and a host that answers everything else between them is
  not down (measured on the web simulation: counting completions tripped healthy hosts every run).

Everything runs on the fetcher's one event loop thread, so no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class HostLimits:
    """The per-host settings of DownloadConfig (its defaults are the only ones)."""

    concurrency: int  # connections a host starts with
    max_concurrency: int  # connections it may grow to while it answers without pushing back
    requests_per_s: float | None  # None: no rate limit
    burst: int
    breaker_failures: int
    breaker_cooldown_s: float


class _Slots:
    """A semaphore whose size may change while it is held (asyncio.Semaphore's cannot): waiters served in order."""

    __slots__ = ("size", "_in_use", "_waiters")

    def __init__(self, size: int) -> None:
        self.size, self._in_use = size, 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self._in_use < self.size and not self._waiters:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted, then cancelled before it ran: the slot goes to the next waiter
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self._in_use -= 1
        self._wake()

    def resize(self, size: int) -> None:
        """A smaller size takes effect as held slots are released; a larger one wakes waiters now."""
        self.size = size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_use += 1
                waiter.set_result(None)


class HostState:
    def __init__(self, limits: HostLimits, clock: Callable[[], float]) -> None:
        self._limits, self._clock = limits, clock
        self._slots = _Slots(limits.concurrency)
        self._backed_off = False  # has it pushed back yet: until then one more connection an answer (slow start)
        self._answers = 0  # answers since the cap last grew, once it has backed off
        self._last_cut = float("-inf")
        self._tat = 0.0  # theoretical arrival time of the next request (GCRA)
        self.users = 0  # requests holding or waiting for a slot: the state is kept while any exist
        self.paused_until = 0.0
        self.failures = 0  # consecutive timeouts / connection failures
        self.last_success = float("-inf")
        self.open_until = 0.0
        self.stalled_open = 0  # connections whose slot a suspected stall gave back (SlotHold.release_stalled)

    def breaker_open(self) -> bool:
        return self._clock() < self.open_until

    def record(self, failed: bool, started: float) -> bool:
        """Count the outcome of a request sent at ``started``; True when this failure opened the breaker."""
        if not failed:
            self.failures = 0
            self.last_success = self._clock()
            return False
        if started < self.last_success:
            return False  # it was sent before the host last answered: says nothing new about the host
        self.failures += 1
        if self.failures >= self._limits.breaker_failures and not self.breaker_open():
            self.open_until = self._clock() + self._limits.breaker_cooldown_s
            # Why not reset to 0: after the cooldown one more failure is enough to open it again.
            self.failures = self._limits.breaker_failures - 1
            return True
        return False

    @property
    def concurrency(self) -> int:
        """The host's connection cap now."""
        return self._slots.size

    def answered(self, started: float, pushback: bool) -> bool:
        """Adapt the connection cap to an answer to a request sent at ``started`` (see the module's docstring);
        True when it made the cap smaller."""
        slots = self._slots
        if pushback:
            if started < self._last_cut:
                return False  # sent before the last cut, under the cap that cut already answered
            self._last_cut, self._backed_off, self._answers = self._clock(), True, 0
            before = slots.size
            slots.resize(max(1, before // 2))
            return slots.size < before
        if slots.size >= self._limits.max_concurrency or not slots.waiting:
            return False  # at its most, or no URL of it waits: more connections would not be used
        self._answers += 1
        if not self._backed_off or self._answers >= slots.size:
            self._answers = 0
            slots.resize(slots.size + 1)
        return False

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    async def _wait_pause(self) -> None:
        while (delay := self.paused_until - self._clock()) > 0:
            await asyncio.sleep(delay)

    def _reserve(self) -> float:
        """Seconds to wait before this request may be sent under the rate limit."""
        rate = self._limits.requests_per_s
        if not rate:
            return 0.0
        now, interval = self._clock(), 1.0 / rate
        tolerance = (max(self._limits.burst, 1) - 1) * interval
        send_at = max(now, self._tat - tolerance)
        self._tat = max(self._tat, now) + interval
        return send_at - now

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[SlotHold]:
        """Hold one of the host's connections; waits (uncharged to any deadline) for a pause, a slot and the rate."""
        self.users += 1
        try:
            await self._wait_pause()
            await self._slots.acquire()
            hold = SlotHold(self)
            try:
                if (delay := self._reserve()) > 0:
                    await asyncio.sleep(delay)
                await self._wait_pause()  # a 429 may have paused the host while we queued
                yield hold
            finally:
                hold.end()
        finally:
            self.users -= 1


class SlotHold:
    """One request's hold on a host slot. A response whose body has stopped coming (a suspected stall) may give
    the slot back early (``release_stalled``), so that the host's next URL starts while it waits out its idle
    timeout; at most the host's cap of such connections stay open beside the ones that count."""

    __slots__ = ("_host", "_released", "_ended")

    def __init__(self, host: HostState) -> None:
        self._host, self._released, self._ended = host, False, False

    def release_stalled(self) -> bool:
        """Give the slot back while the request waits on; False when already given or the host has its share."""
        host = self._host
        if self._released or self._ended or host.stalled_open >= host.concurrency:
            return False
        self._released = True
        host.stalled_open += 1
        host._slots.release()
        return True

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._released:
            self._host.stalled_open -= 1
        else:
            self._host._slots.release()


class Hosts:
    """``HostState`` by host name; idle states beyond ``max_hosts`` are dropped (millions of hosts must not leak)."""

    def __init__(self, limits: HostLimits, max_hosts: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits, self._max, self._clock = limits, max_hosts, clock
        self._states: OrderedDict[str, HostState] = OrderedDict()

    def get(self, host: str) -> HostState:
        state = self._states.get(host)
        if state is None:
            state = self._states[host] = HostState(self._limits, self._clock)
            if len(self._states) > self._max:
                self._evict()
        else:
            self._states.move_to_end(host)
        return state

    def _evict(self) -> None:
        # The oldest few only: a slice of list(self._states) would copy every key for each new host.
        for name in list(itertools.islice(self._states, len(self._states) - self._max)):
            state = self._states[name]
            # A host in use, paused or with its breaker open keeps its state: forgetting it would undo the pause.
            if state.users == 0 and not state.breaker_open() and state.paused_until <= self._clock():
                del self._states[name]
